"""The corrected label table: recorded in the workspace, read by every stage, hashed so that
nothing trained on old labels is mixed with new ones (core/label_table.py)."""
import json

import pandas as pd
import pytest
from conftest import workspace_sharing_crops

from core.dataset import load_train
from core.errors import DataError
from core.label_table import (
    check_runs_labels,
    corrections_file,
    current_labels,
    labels_hash,
    load_labels,
    manifest_labels_hash,
    set_corrections,
)
from core.manifest import read_manifest
from core.workspace import Workspace


def age_file(data, path, age=70):
    """A corrections file setting every training person's age."""
    persons = pd.read_csv(data / "train" / "train.csv", dtype=str)["id"]
    pd.DataFrame({"id": persons, "field": "age", "value": str(age)}).to_csv(path, index=False)
    return path


def test_corrections_are_recorded_in_the_workspace_and_cleared(demo_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert corrections_file(ws) is None
    corr = age_file(demo_dir, tmp_path / "c.csv")
    assert set_corrections(ws, corr) == corr.resolve()
    assert set_corrections(ws, None) == corr.resolve()      # omitted: the recorded one
    assert (load_labels(demo_dir, ws)["age_group"] == 2).all()
    assert set_corrections(ws, "none") is None
    assert (load_labels(demo_dir, ws)["age_group"] < 2).any()
    with pytest.raises(DataError, match="no such file"):
        set_corrections(ws, tmp_path / "missing.csv")


def test_a_recorded_file_that_disappeared_is_named(demo_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    corr = age_file(demo_dir, tmp_path / "c.csv")
    set_corrections(ws, corr)
    corr.unlink()
    with pytest.raises(DataError, match="no longer exists"):
        load_labels(demo_dir, ws)


def test_hash_is_the_labels_content(demo_dir, tmp_path):
    plain = load_train(demo_dir)
    assert labels_hash(plain) == labels_hash(plain.sample(frac=1, random_state=0))   # order does not count
    fixed = load_train(demo_dir, corrections=age_file(demo_dir, tmp_path / "c.csv"))
    assert labels_hash(fixed) != labels_hash(plain)


def test_manifest_labels_follow_the_corrections(crops_ws, tmp_path):
    """preprocess writes the corrected labels; a stage finds a manifest made before a change stale."""
    data, src = crops_ws
    from orchestrator.stages.preprocess import image_table
    corr = age_file(data, tmp_path / "c.csv")
    table = image_table(data, corr)
    assert (table.loc[table["split"] == "train", "age"] == 70).all()
    ws = workspace_sharing_crops(src, tmp_path / "ws")   # the session's manifest: made without corrections
    assert current_labels(data, ws)[1] == manifest_labels_hash(read_manifest(ws.manifest))
    set_corrections(ws, corr)
    with pytest.raises(DataError, match="rerun `python -m orchestrator preprocess`"):
        current_labels(data, ws)


def test_runs_on_other_labels_stop_the_command():
    check_runs_labels({"a": "h1", "b": ""}, "h1", "fix")   # same labels, or from before the tag
    with pytest.raises(DataError, match=r"b \(labels h0\); rerun it"):
        check_runs_labels({"a": "h1", "b": "h0"}, "h1", "rerun it")


def tiny_data(root, age=59):
    """A data set of one person (000001, male, ``age``) with two image files (never opened)."""
    folder = root / "train" / "images" / "000001_male_Asian_59"
    folder.mkdir(parents=True)
    for kind in ("normal", "mask1"):
        (folder / f"{kind}.jpg").write_bytes(b"")
    (root / "train" / "train.csv").write_text(f"id,gender,race,age,path\n000001,male,Asian,{age},{folder.name}\n")
    return root


def test_clearing_needs_no_record_and_takes_any_spelling_of_none(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert set_corrections(ws, " NONE ") is None and set_corrections(ws, "") is None   # nothing recorded: fine
    corr = tmp_path / "c.csv"
    corr.write_text("id,field,value\n")
    set_corrections(ws, corr)
    assert set_corrections(ws, "None") is None and not (ws.root / "corrections.json").exists()
    assert corrections_file(ws) is None


def test_the_record_holds_the_absolute_path_of_the_file(tmp_path, monkeypatch):
    """a relative or ~ path is recorded resolved, so a command run from elsewhere finds it."""
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "c.csv").write_text("id,field,value\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert set_corrections(ws, "~/c.csv") == (tmp_path / "c.csv").resolve()
    monkeypatch.chdir(tmp_path)
    assert set_corrections(ws, "c.csv") == (tmp_path / "c.csv").resolve()
    assert json.loads((ws.root / "corrections.json").read_text()) == {"path": str((tmp_path / "c.csv").resolve())}
    assert set_corrections(ws, None) == corrections_file(ws) == (tmp_path / "c.csv").resolve()


def test_a_file_with_a_bad_row_is_refused_and_the_record_kept(tmp_path):
    """with the data set given, the file is applied first: its bad line is named and the file
    recorded before stays in effect; without a train.csv there is nothing to check it against."""
    data, ws = tiny_data(tmp_path / "data"), Workspace(tmp_path / "ws")
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("id,field,value\n000001,age,61\n")
    bad.write_text("id,field,value\n000001,age,61\n000001,age,old\n")
    assert set_corrections(ws, good, data) == good.resolve()
    with pytest.raises(DataError, match=r"bad\.csv line 3: age 'old' is not a whole number"):
        set_corrections(ws, bad, data)
    assert corrections_file(ws) == good.resolve()
    assert set_corrections(ws, bad, tmp_path / "elsewhere") == bad.resolve()   # no train.csv there


def test_a_missing_file_is_refused_with_the_columns_and_none(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataError) as err:
        set_corrections(ws, "nowhere.csv")
    assert err.value.problems == ["--corrections nowhere.csv: no such file; give a CSV with columns "
                                  "id,field,value[,note] (README 'Data layout'), or 'none'"]
    assert not (ws.root / "corrections.json").exists()


@pytest.mark.parametrize("text,error", [("{not json", "JSONDecodeError"), ('{"file": "/c.csv"}', "KeyError"),
                                        ('{"path": 3}', "TypeError"), ('["/c.csv"]', "TypeError")])
def test_a_hand_edited_record_is_named_with_its_form_and_the_fix(tmp_path, text, error):
    ws = Workspace(tmp_path / "ws")
    record = ws.root / "corrections.json"
    record.parent.mkdir(parents=True)
    record.write_text(text)
    with pytest.raises(DataError) as err:
        corrections_file(ws)
    [problem] = err.value.problems
    assert problem.startswith(f"{record}: not a corrections record ({error}: ")
    assert problem.endswith('; it holds {"path": "/absolute/corrections.csv"}; pass --corrections FILE '
                            "(or --corrections none to train without corrections)")


def test_a_record_saved_with_a_bom_is_read(tmp_path):
    """Windows editors save JSON with a byte-order mark."""
    ws = Workspace(tmp_path / "ws")
    corr = tmp_path / "c.csv"
    corr.write_text("id,field,value\n")
    ws.root.mkdir(parents=True)
    (ws.root / "corrections.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"path": str(corr)}).encode())
    assert corrections_file(ws) == corr


def test_a_vanished_file_is_named_with_the_fix(tmp_path):
    ws = Workspace(tmp_path / "ws")
    corr = tmp_path / "c.csv"
    corr.write_text("id,field,value\n")
    set_corrections(ws, corr)
    corr.unlink()
    with pytest.raises(DataError) as err:
        corrections_file(ws)
    assert err.value.problems == [f"{ws.root / 'corrections.json'}: the workspace's corrections file {corr.resolve()} "
                                  "no longer exists; pass --corrections FILE (or --corrections none to train "
                                  "without corrections)"]


def test_labels_are_read_with_the_training_age_boundary(tmp_path):
    data, ws = tiny_data(tmp_path / "data", age=59), Workspace(tmp_path / "ws")
    assert load_labels(data, ws)["age_group"].tolist() == [1, 1]
    assert load_labels(data, ws, old_from=59)["age_group"].tolist() == [2, 2]


def test_the_hash_reads_labels_as_numbers_and_ids_as_text():
    """16 hex digits; the same labels stored as floats or an id stored as a number hash alike;
    each hashed column counts, other columns do not."""
    t = pd.DataFrame({"path": ["a", "b"], "person": ["1", "2"], "mask": [0, 2], "gender": [1, 0],
                      "age": [20, 70], "race": ["x", "y"]})
    h = labels_hash(t)
    assert len(h) == 16 and int(h, 16) >= 0
    assert labels_hash(t.astype({"mask": float, "gender": float, "age": float})) == h
    assert labels_hash(t.assign(person=[1, 2], race="z")) == h
    for col, other in (("path", ["a", "c"]), ("person", ["1", "3"]), ("mask", [0, 1]), ("gender", [1, 1]),
                       ("age", [20, 71])):
        assert labels_hash(t.assign(**{col: other})) != h, col


def test_the_manifest_hash_is_that_of_its_train_rows():
    train = pd.DataFrame({"path": ["a"], "person": ["1"], "mask": [0], "gender": [1], "age": [20], "split": "train"})
    evals = pd.DataFrame({"path": ["e"], "person": [""], "mask": [-1], "gender": [-1], "age": [-1], "split": "eval"})
    assert manifest_labels_hash(pd.concat([train, evals])) == labels_hash(train)


def test_a_manifest_of_other_labels_names_both_tables_and_the_rerun(tmp_path):
    """current_labels: the table and its hash where the manifest holds these labels; else which
    tables differ, the corrections in effect and the command that makes them one."""
    from core.manifest import COLUMNS
    data, ws = tiny_data(tmp_path / "data"), Workspace(tmp_path / "ws")
    table = load_train(data)
    manifest = table.assign(split="train", image_id="", x1=0.0, y1=0.0, x2=1.0, y2=1.0, prob=1.0,
                            fallback=False, error="", crop="c.jpg")[list(COLUMNS)]
    ws.manifest.parent.mkdir(parents=True)
    manifest.to_parquet(ws.manifest)
    got, h = current_labels(data, ws)
    assert h == labels_hash(table) and got.equals(table)
    corr = tmp_path / "c.csv"
    corr.write_text("id,field,value\n000001,age,61\n")
    set_corrections(ws, corr)
    want = labels_hash(load_train(data, corrections=corr))
    with pytest.raises(DataError) as err:
        current_labels(data, ws)
    assert err.value.problems == [
        f"{ws.manifest}: its labels (table {h}) are not train.csv + the workspace's corrections ({corr.resolve()}; "
        f"table {want}): train.csv or the corrections changed since preprocessing; rerun `python -m orchestrator "
        "preprocess` (cached crops are reused), then retrain what depends on the labels"]


def test_stale_runs_are_counted_and_the_first_five_listed():
    runs = {f"r{i}": "old" for i in range(7)} | {"same": "new", "untagged": ""}
    with pytest.raises(DataError) as err:
        check_runs_labels(runs, "new", "retrain them")
    assert err.value.problems == [
        "7 model run(s) were trained on another label table than the current one (new; train.csv or the "
        "corrections changed since): r0 (labels old), r1 (labels old), r2 (labels old), r3 (labels old), "
        "r4 (labels old); retrain them"]
