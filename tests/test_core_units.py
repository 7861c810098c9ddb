"""Small pure functions of the bottom layer and the schedule, checked value by value (the quick
tier: `make mutation` measures how many of their mutants these and the other quick tests kill)."""
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import provenance
from core.atomic import write_parquet_atomic
from core.deadlines import current_deadline, deadline_file, set_deadline
from core.faces import CropSettings, crop_box, crop_jpeg, denormalise, iou, normalise
from core.folds import FoldSpec, fold_file, folds_key, with_folds
from core.provenance import code_version, dict_hash, pinned_folds_key, rows_hash, text_hash
from trainables.schedule import lr_factor


def test_iou_of_boxes_that_are_not_squares_at_the_origin():
    assert iou((0, 0, 10, 20), (5, 10, 25, 30)) == pytest.approx(50 / 550)   # 5 x 10 shared
    assert iou((5, 10, 25, 30), (0, 0, 10, 20)) == pytest.approx(50 / 550)
    assert iou((0, 0, 10, 10), (20, 0, 30, 10)) == 0.0                       # apart along x only
    assert iou((0, 0, 10, 10), (0, 20, 10, 30)) == 0.0                       # apart along y only
    assert iou((2, 3, 2, 9), (2, 3, 2, 9)) == 0.0                            # no area: no overlap


def test_lr_factor_at_the_ends_the_middle_and_through_warmup():
    assert lr_factor(0.0) == 1.0 and lr_factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0.5) == pytest.approx(0.5) and lr_factor(0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(-1.0) == 1.0 and lr_factor(2.0) == pytest.approx(0.0, abs=1e-12)   # clamped
    assert lr_factor(0.25, shape="linear") == pytest.approx(0.75)
    assert lr_factor(0.0, warmup=0.1) == pytest.approx(1e-3 / 0.101)                  # never 0 at the start
    assert lr_factor(0.05, warmup=0.1) == pytest.approx(0.051 / 0.101)
    assert lr_factor(0.55, warmup=0.1) == pytest.approx(0.5)                          # cosine over the rest
    assert lr_factor(0.55, shape="linear", warmup=0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, warmup=1.0) == pytest.approx(0.0, abs=1e-12)


def test_hashes_name_content_not_order():
    assert text_hash("a") == "ca978112ca1bbdca" and len(text_hash("a", 8)) == 8        # sha256, cut
    t = pd.DataFrame({"path": ["b", "a"], "label": [1, 2], "other": [0, 0]})
    assert rows_hash(t, ["path", "label"]) == rows_hash(t.iloc[::-1].assign(other=5), ["path", "label"])
    assert rows_hash(t, ["path", "label"]) != rows_hash(t.assign(label=[2, 1]), ["path", "label"])
    assert rows_hash(t, ["path"]) != rows_hash(t, ["path", "label"])
    assert dict_hash({"a": 1, "b": 2}) == dict_hash({"b": 2, "a": 1}) != dict_hash({"a": 1, "b": 3})
    assert pinned_folds_key({"folds": "person_k5_seed777-abc123"}) == "abc123" and pinned_folds_key({}) == ""


def test_code_version_is_the_commit_or_the_installed_version(monkeypatch, tmp_path):
    assert re.fullmatch(r"[0-9a-f]{40}(\+[0-9a-f]{8})?", code_version())   # this checkout
    monkeypatch.setattr(provenance, "ROOT", tmp_path)                      # a folder outside git
    assert code_version() == "mask-orchestrator 0.1.0"


def test_a_phase_deadline_is_kept_in_the_workspace(tmp_path):
    assert deadline_file(tmp_path, "run-all", "cv") == tmp_path / "deadlines" / "run-all-cv.json"
    assert current_deadline(tmp_path, "run-all", "cv", fallback=7.0) == 7.0     # none written yet
    set_deadline(tmp_path, "run-all", "cv", 1234.5)
    assert current_deadline(tmp_path, "run-all", "cv", fallback=7.0) == 1234.5
    assert current_deadline(tmp_path, "run-all", "full") == 0.0                 # another phase's file


def test_fold_files_are_named_by_spec_and_table():
    spec = FoldSpec(k=3, seed=5)
    assert fold_file("ws", spec).as_posix() == f"ws/folds/{spec.mode}_k3_seed5.csv"
    assert fold_file("ws", spec, "k1").as_posix() == f"ws/folds/{spec.mode}_k3_seed5-k1.csv"
    t = pd.DataFrame({"path": ["a", "b"], "person": ["p", "q"], "label": [1, 2]})
    assert folds_key(t) == folds_key(t.iloc[::-1]) and len(folds_key(t)) == 12
    assert folds_key(t) != folds_key(t.assign(label=[1, 3])) != folds_key(t.assign(person=["p", "p"]))
    merged = with_folds(t, pd.DataFrame({"path": ["b", "a"], "fold": [0, 1], "extra": [9, 9]}))
    assert merged["fold"].tolist() == [1, 0] and "extra" not in merged
    with pytest.raises(pd.errors.MergeError):   # one fold per image
        with_folds(t, pd.DataFrame({"path": ["a", "a"], "fold": [0, 1]}))


def test_parquet_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "m.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2]}, index=[5, 6]), path)   # the index is not kept
    assert pd.read_parquet(path).index.tolist() == [0, 1]
    assert pd.read_parquet(path)["a"].tolist() == [1, 2] and [p.name for p in tmp_path.iterdir()] == ["m.parquet"]
    with pytest.raises(Exception):
        write_parquet_atomic(pd.DataFrame({"a": [object()]}), path)   # cannot be written
    assert pd.read_parquet(path)["a"].tolist() == [1, 2] and [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_boxes_normalise_both_ways_and_crops_are_jpegs_of_the_set_size():
    box = (10.0, 20.0, 110.0, 220.0)
    assert normalise(box, 200, 400).tolist() == [0.05, 0.05, 0.55, 0.55]
    assert denormalise(normalise(box, 200, 400), 200, 400) == pytest.approx(box)
    s = CropSettings(size=48, jpeg_quality=90)
    img = Image.new("RGB", (200, 400), (200, 30, 30))
    data = crop_jpeg(img, crop_box(box, 200, 400, s), s)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (48, 48) and np.abs(np.asarray(im, int) - (200, 30, 30)).max() < 8
    assert len(crop_jpeg(img, box, CropSettings(size=48, jpeg_quality=20))) < len(data)


def test_crop_settings_refuse_bad_values_and_keep_one_spelling():
    with pytest.raises(ValueError, match="detect_scale 0"):
        CropSettings(detect_scale=0)
    with pytest.raises(ValueError, match="detect_scale 1.5"):
        CropSettings(detect_scale=1.5)
    assert CropSettings(detect_scale=1).detect_scale == 1.0
    s = CropSettings(size=96.0, margin=3, thresholds=[0.5, 0.6, 0.7])
    assert (type(s.size), type(s.margin), s.thresholds) == (int, float, (0.5, 0.6, 0.7))


def test_crop_box_shifts_a_box_that_pokes_out_right_or_below_and_leaves_one_inside():
    s = CropSettings()
    assert crop_box((300, 100, 420, 220), 384, 512, s) == (264, 100, 384, 220)      # out right: moved left
    assert crop_box((100, 450, 180, 530), 384, 512, s) == (100, 432, 180, 512)      # out below: moved up
    assert crop_box((0.5, 10, 100.5, 110), 384, 512, s) == (0.5, 10, 100.5, 110)    # inside: kept
    assert crop_box((10, 40, 50, 60), 384, 512, s) == (10, 30, 50, 70)              # squared about its centre


class Clock:
    """A clock the test sets (the schedule reads time only through it)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_budget_schedule_resumes_from_its_state_and_anneals_by_steps_or_clock():
    import torch
    from trainables.schedule import BudgetSchedule
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    clock = Clock()
    s = BudgetSchedule(opt, 4, clock=clock)
    assert s.get_last_lr() == [0.4] and s.progress() == 0.0
    s.step()
    assert s.progress() == 0.25 and s.get_last_lr() == [pytest.approx(0.4 * lr_factor(0.25))]
    state = s.state_dict()
    assert state == {"steps": 1, "progress": 0.25, "base_lrs": [0.4]}
    again = BudgetSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 4, clock=clock)
    again.load_state_dict(state)   # the resumed trial's peak rate is the saved one
    assert again.base_lrs == [0.4] and again.get_last_lr() == [pytest.approx(0.4 * lr_factor(0.25))]
    s.end_time = clock.t + 10.0    # an end 10 s after the first step: the clock leads the steps
    s.step()                       # 2 of 4 steps: 0.5
    clock.t += 8.0
    assert s.progress() == pytest.approx(0.8)
    s.end_time = clock.t - 1.0     # an end already passed: done
    assert s.progress() == 1.0
    s.finish_within(2)             # no time left: anneal over the next 2 steps instead
    assert (s.end_time, s.total_steps) == (0.0, s.steps + 2)
    assert BudgetSchedule(opt, 0, clock=clock).total_steps == 1


def test_trial_time_keeps_room_for_the_last_validation_and_the_end():
    from trainables.schedule import END_RESERVE_S, TrialTime
    clock = Clock(0.0)
    t = TrialTime(100.0, val_share=0.5, clock=clock)
    t.epoch_done(20.0)
    assert t.train_end() == 100.0 - 10.0 - END_RESERVE_S and not t.out_of_time()
    t.val_s = 4.0                   # measured: replaces the estimate
    assert t.train_end() == 100.0 - 4.0 - END_RESERVE_S
    clock.t = t.train_end() - 2.0   # a tenth of an epoch (2 s) is left: out of time
    assert t.out_of_time()
    t.epoch_done(10.0)              # out of time: the longest epoch is kept
    assert t.epoch_s == 20.0
    assert TrialTime(0.0, clock=clock).train_end() == 0.0 and not TrialTime(0.0, clock=clock).out_of_time()


@pytest.mark.parametrize("write", ["bytes", "parquet"])
def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, write):
    """the temp file is hidden beside the target (.NAME.*.tmp, in its folder) and removed when the
    rename fails; the target keeps its old content and the error reaches the caller."""
    from core import atomic
    path = tmp_path / "sub" / "m.out"
    atomic.write_bytes_atomic(b"old", path)
    tried = []

    def broken_replace(src, dst):
        tried.append((Path(src), Path(dst)))
        assert Path(src).is_file()   # written whole before the rename
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        if write == "bytes":
            atomic.write_text_atomic("new", path)
        else:
            atomic.write_parquet_atomic(pd.DataFrame({"a": [1]}), path)
    [(tmp, dst)] = tried
    assert dst == path and tmp.parent == path.parent
    assert tmp.name.startswith(".m.out.") and tmp.name.endswith(".tmp")
    assert path.read_bytes() == b"old" and [p.name for p in path.parent.iterdir()] == ["m.out"]


def test_an_atomic_write_makes_the_folder_and_replaces_the_file(tmp_path):
    from core.atomic import write_csv_atomic, write_text_atomic
    path = tmp_path / "a" / "b" / "t.csv"
    write_text_atomic("x", path)
    write_csv_atomic(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), path)
    assert path.read_text() == "a,b\n1,x\n2,y\n" and [p.name for p in path.parent.iterdir()] == ["t.csv"]


def test_a_data_error_lists_its_problems_up_to_the_limit_and_counts_the_rest():
    from core.errors import DataError
    one = DataError("a.csv line 2: bad; fix it")
    assert one.problems == ["a.csv line 2: bad; fix it"] and isinstance(one, ValueError)
    assert str(one) == "1 problem(s) in the input data:\n  - a.csv line 2: bad; fix it"
    many = DataError((f"p{i}" for i in range(23)))
    assert many.problems == [f"p{i}" for i in range(23)]
    assert str(many) == "23 problem(s) in the input data:\n  - " + "\n  - ".join(f"p{i}" for i in range(20)) \
        + "\n  ... and 3 more"
    assert str(DataError(["x", "y", "z"], limit=2)) == "3 problem(s) in the input data:\n  - x\n  - y\n  ... and 1 more"
    assert str(DataError(["x", "y"], limit=2)) == "2 problem(s) in the input data:\n  - x\n  - y"
