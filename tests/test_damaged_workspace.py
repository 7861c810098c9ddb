"""A workspace damaged after the fact: each damage is found with a message naming what to rerun,
detecting it writes nothing, and the rerun redoes only what was damaged."""
import hashlib
import shutil
from pathlib import Path

import pytest

from core.errors import DataError
from core.manifest import check_crops, crop_whole, read_manifest
from core.workspace import Workspace
from tests.bad_input import attempt


def _digests(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*.jpg"))}


def test_damaged_crops_and_manifest_are_found_and_only_they_are_redone(crops_ws, tmp_path):
    from core.faces import CropSettings
    from orchestrator.infra.ray_session import ray_session
    from orchestrator.stages.preprocess import preprocess
    from trainables.data import crop_cache
    data, src = crops_ws
    ws = Workspace(shutil.copytree(src.root, tmp_path / "ws"))
    manifest = read_manifest(ws.manifest)
    crops = manifest.loc[manifest["crop"] != "", "crop"].tolist()
    deleted, cut = ws.crops / crops[0], ws.crops / crops[-1]   # a training crop and an eval crop
    deleted.unlink()
    cut.write_bytes(cut.read_bytes()[:300])
    ws.manifest.write_bytes(ws.manifest.read_bytes()[: ws.manifest.stat().st_size // 2])   # a row cut in half
    good = {k: v for k, v in _digests(ws.crops).items() if k not in (crops[0], crops[-1])}

    found = [attempt("damaged workspace: manifest cut in half", lambda: read_manifest(ws.manifest),
                     refusals=(DataError,), watch=[ws.root]),
             attempt("damaged workspace: crop deleted or cut short", lambda: check_crops(ws.crops, crops),
                     refusals=(DataError,), watch=[ws.root]),
             attempt("damaged workspace: crop deleted or cut short", lambda: crop_cache(ws, crops, 32),
                     refusals=(DataError,), watch=[ws.root])]
    assert [o.name for o in found] == ["refused"] * 3
    assert all("rerun `python -m orchestrator preprocess`" in str(o.error) for o in found)
    assert "damaged" in str(found[0].error) and "2 crop file(s) missing or cut short" in str(found[1].error)

    with ray_session(num_cpus=2):
        redone = preprocess(data, ws, CropSettings(size=96), progress=False)
    summary = redone.attrs["summary"]
    assert summary.images - summary.skipped == 2            # the two damaged crops, nothing else
    assert all(crop_whole(ws.crops / c) for c in redone.loc[redone["crop"] != "", "crop"])
    assert {k: v for k, v in _digests(ws.crops).items() if k in good} == good   # whole crops untouched
    assert len(read_manifest(ws.manifest)) == len(manifest)


def _pins(**over):
    from orchestrator.study.pins import Pins
    return Pins(**{**dict(labels="l1", folds="f1", crops="c1", settings="s1", code="k1"), **over})


@pytest.mark.parametrize("edit,match", [
    (lambda text: text[: len(text) // 2], r"not the study's record of its inputs \(JSONDecodeError"),
    (lambda text: text.replace('"labels"', '"label"'), r"not the study's record of its inputs \(TypeError"),
    (lambda text: "[]", r"not the study's record of its inputs \(TypeError"),
    (lambda text: text.replace('"l1"', '"l2"'), r"made from other inputs .*labels l2 -> l1"),
])
def test_hand_edited_study_record_is_refused_with_a_new_study_name(tmp_path, edit, match):
    from orchestrator.study.pins import pin_file, pin_study
    ws = Workspace(tmp_path / "ws").make()
    pin_study(ws, "age", _pins())
    path = pin_file(ws, "age")
    path.write_text(edit(path.read_text()))
    out = attempt("damaged workspace: study record edited by hand", lambda: pin_study(ws, "age", _pins()),
                  refusals=(DataError,), watch=[ws.root])
    assert out.name == "refused", out.result
    assert str(path) in str(out.error) and "--study age-2" in str(out.error)
    with pytest.raises(DataError, match=match):
        pin_study(ws, "age", _pins())


def test_moved_mlflow_artifact_folder_is_named_before_any_work(tmp_path):
    from mlflow import MlflowClient

    from results.run_schema import LEGACY_MODEL_FILE, ensure_experiment
    from results.selection import ChosenModel, check_artifacts
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "orchestrator", tmp_path / "artifacts")
    client = MlflowClient(uri)
    run = client.create_run(exp)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    client.log_artifact(run.info.run_id, str(model), str(Path(LEGACY_MODEL_FILE).parent))
    client.set_terminated(run.info.run_id)
    chosen = {"age": [ChosenModel("age", run.info.run_id, "cv", "0", "age", "default")]}
    check_artifacts(client, chosen)   # whole: nothing to say
    shutil.move(tmp_path / "artifacts", tmp_path / "elsewhere")
    out = attempt("damaged workspace: MLflow artifact folder moved", lambda: check_artifacts(client, chosen),
                  refusals=(DataError,), watch=[tmp_path / "elsewhere"])
    assert out.name == "refused"
    assert str(tmp_path / "artifacts") in str(out.error) and "move it back" in str(out.error)
    assert "tune --head age --study NEW_NAME" in str(out.error)
    shutil.move(tmp_path / "elsewhere", tmp_path / "artifacts")
    check_artifacts(client, chosen)   # moved back: the runs are usable again, nothing retrained

