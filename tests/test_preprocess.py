"""`preprocess` on a real local Ray: demo data end to end, bad images, cache, a killed worker,
and crop quality on real faces (the real-face set, $UTKMASK_DIR)."""
import io
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fault_gate import Crash
from PIL import Image

from core.demo_data import DemoSpec, write_demo_data
from core.faces import CropSettings, iou
from core.manifest import COLUMNS, read_manifest
from core.workspace import Workspace
from orchestrator.cli import main
from orchestrator.stages.preprocess import preprocess


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    """56 drawn portraits (6 + 2 persons): MTCNN finds few faces there, so the fallback runs."""
    return write_demo_data(tmp_path_factory.mktemp("small"), DemoSpec(train_persons=6, eval_persons=2))


@pytest.fixture
def data(small_demo, tmp_path) -> Path:
    return Path(shutil.copytree(small_demo, tmp_path / "data"))


def _expected_paths(data: Path) -> list[str]:
    from orchestrator.stages.preprocess import image_table
    return list(image_table(data)["path"])


def _check_complete(m: pd.DataFrame, data: Path, ws: Workspace) -> None:
    assert list(m["path"]) == _expected_paths(data)                  # every image, once, in order
    assert not m["path"].duplicated().any()
    stored = read_manifest(ws.manifest)
    assert set(COLUMNS) <= set(stored.columns) and len(stored) == len(m)
    for crop in m.loc[m["crop"] != "", "crop"]:
        with Image.open(ws.crops / crop) as im:
            assert im.size == (224, 224) and im.mode == "RGB"
    assert not list(ws.crops.rglob("*.tmp"))                         # no half-written files


def test_demo_end_to_end_then_rerun_skips_everything(data, tmp_path):
    ws = Workspace(tmp_path / "ws")
    # None: a GPU share per worker where the cluster has GPUs (tests/test_gpu_scheduling.py); the
    # suite's Ray has none, so the workers run MTCNN on the CPU and reserve no GPU
    m = preprocess(data, ws, CropSettings(second_pass=True), num_gpus_per_worker=None, progress=False)
    _check_complete(m, data, ws)
    assert (m["device"] == "cpu, Ray GPUs []").all(), m["device"].unique()
    s = m.attrs["summary"]
    assert s.failed == 0 and s.fallback > 0 and s.detected + s.fallback == s.images
    assert set(m["split"]) == {"train", "eval"}
    ev = m[m["split"] == "eval"]
    assert (ev["person"] == "").all() and (ev["label"] == -1).all() and (ev["image_id"] != "").all()
    tr = m[m["split"] == "train"]
    assert (tr["label"].between(0, 17)).all() and (tr["image_id"] == "").all()
    assert m["method"].isin(["detect", "weak_detect", "person_prior", "global_prior", "centre"]).all()
    fb = m[m["fallback"]]
    assert fb["prob"].isna().all() and fb["method"].isin(["person_prior", "global_prior", "centre"]).all()
    mtimes = {c: (ws.crops / c).stat().st_mtime_ns for c in m["crop"]}

    again = preprocess(data, ws, CropSettings(second_pass=True), progress=False)
    assert again.attrs["summary"].skipped == len(m)
    assert {c: (ws.crops / c).stat().st_mtime_ns for c in again["crop"]} == mtimes
    pd.testing.assert_frame_equal(again, m, check_like=True)

    # a changed source image is redone, alone
    img = data / m.loc[0, "path"]
    Image.open(img).transpose(Image.FLIP_LEFT_RIGHT).save(img, quality=90)
    third = preprocess(data, ws, CropSettings(second_pass=True), progress=False)
    assert third.attrs["summary"].skipped >= len(m) - 8      # the image plus misses whose prior moved
    assert third.attrs["summary"].skipped < len(m)
    # ... into a new crop file (named by the source's content and box): whoever decoded the old
    # crop, or pinned it, keeps it, and nobody reads old pixels under the new name
    new_crop = third.set_index("path").at[m.loc[0, "path"], "crop"]
    assert new_crop != m.loc[0, "crop"] and (ws.crops / m.loc[0, "crop"]).is_file()


def test_changed_settings_invalidate_the_cache(data, tmp_path, caplog):
    ws = Workspace(tmp_path / "ws")
    old = preprocess(data, ws, CropSettings(), progress=False)
    new = preprocess(data, ws, CropSettings(margin=20, size=96), progress=False)
    assert new.attrs["summary"].skipped == 0
    assert "crop settings changed (size 224 -> 96, margin 0.0 -> 20.0)" in caplog.text
    old_key, new_key = old["crop"][0].split("/")[0], new["crop"][0].split("/")[0]
    assert old_key != new_key and not (ws.crops / old_key).exists()
    with Image.open(ws.crops / new["crop"][0]) as im:
        assert im.size == (96, 96)


def _write_bad_images(data: Path) -> dict[str, str]:
    """Replace some training images with broken ones; returns case -> path (relative to data)."""
    folders = sorted((data / "train" / "images").iterdir())
    good = Image.open(folders[0] / "normal.jpg").convert("RGB")
    buf = io.BytesIO()
    good.save(buf, format="JPEG", quality=90)
    cases = {
        "zero_bytes": (folders[0] / "mask1.jpg", b""),
        "truncated": (folders[0] / "mask2.jpg", buf.getvalue()[: len(buf.getvalue()) // 2]),
        "not_an_image": (folders[0] / "mask3.jpg", b"<html>not a photo</html>\n" * 50),
    }
    for name, (path, raw) in cases.items():
        path.write_bytes(raw)
    good.convert("L").save(folders[1] / "mask1.jpg", quality=90)
    (folders[1] / "mask2.jpg").unlink()
    good.convert("RGBA").save(folders[1] / "mask2.png")
    good.convert("CMYK").save(folders[1] / "mask3.jpg", quality=90)
    good.resize((9, 12)).save(folders[1] / "mask4.jpg", quality=90)
    rel = lambda p: p.relative_to(data).as_posix()  # noqa: E731
    out = {k: rel(p) for k, (p, _) in cases.items()}
    out.update(greyscale=rel(folders[1] / "mask1.jpg"), rgba_png=rel(folders[1] / "mask2.png"),
               cmyk=rel(folders[1] / "mask3.jpg"), tiny=rel(folders[1] / "mask4.jpg"))
    return out


def test_bad_images_never_crash_the_job(data, tmp_path, capsys):
    cases = _write_bad_images(data)
    ws = tmp_path / "ws"
    # 2 unreadable of 56 is 3.6%: above --max-failed 0.01, so the command fails (after finishing)
    assert main(["preprocess", "--data", str(data), "--workspace", str(ws), "--no-progress"]) == 1
    err = capsys.readouterr()
    assert "2 failed" in err.out and "could not be read" in err.err
    m = read_manifest(Workspace(ws).manifest).set_index("path")
    for name in ("zero_bytes", "not_an_image"):
        assert m.loc[cases[name], "crop"] == "" and m.loc[cases[name], "error"], name
    for name in ("truncated", "greyscale", "rgba_png", "cmyk", "tiny"):
        row = m.loc[cases[name]]
        assert row["crop"] and row["error"] == "" and (Path(ws) / "crops" / row["crop"]).is_file(), name
    assert m.loc[cases["tiny"], "fallback"]
    assert "mode CMYK" in m.loc[cases["cmyk"], "note"] and "partly" in m.loc[cases["truncated"], "note"]
    assert main(["preprocess", "--data", str(data), "--workspace", str(ws), "--no-progress",
                 "--max-failed", "0.05"]) == 0


def test_killed_worker_is_retried_and_nothing_is_lost(data, tmp_path):
    ws = Workspace(tmp_path / "ws")
    with Crash("detect_batch", how="kill") as crash:
        m = preprocess(data, ws, CropSettings(), progress=False, batch_size=8)
    assert crash.crashed()                       # a worker really died mid-batch ...
    _check_complete(m, data, ws)                 # ... and every image is there exactly once
    assert m.attrs["summary"].failed == 0


def test_real_faces_are_cropped_on_the_face(utkmask_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    m = preprocess(utkmask_dir, ws, progress=False)
    truth = pd.concat([pd.read_csv(utkmask_dir / s / "boxes.csv").assign(path=lambda d, s=s: f"{s}/images/" + d["image"])
                       for s in ("train", "eval")])
    j = m.merge(truth, on="path", suffixes=("", "_t"))
    assert len(j) == len(m) == 420
    j["on_face"] = [iou((r.x1, r.y1, r.x2, r.y2), (r.x1_t, r.y1_t, r.x2_t, r.y2_t)) >= 0.5 for r in j.itertuples()]
    by_split = j.groupby("split")["on_face"].mean()
    assert by_split["train"] >= 0.97 and by_split["eval"] >= 0.97, by_split.to_dict()
    normal = j[j["kind"] == "normal"]
    assert not normal["fallback"].any() and (normal["prob"] >= 0.5).all()
    assert os.path.isfile(ws.manifest)
