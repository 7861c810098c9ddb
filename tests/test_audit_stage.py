"""The `audit` stage on a real MLflow SQLite store: planted label errors in the manifest are found
from the cv runs' out-of-fold predictions; bad studies get clear errors."""
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow_runs import log_model_run, oof_frame, store, write_manifest

from core.corrections import apply_corrections
from core.dataset import load_train
from core.errors import DataError
from core.folds import FoldSpec, assign_folds
from core.labels import HEADS
from orchestrator.cli import main
from orchestrator.stages.audit import AuditOptions, audit

SKILL = 6.0   # OOF logits this much above the truth: p(true class) ~ 0.99


def _log_folds(client, data, art, *, k=2, folds=None, oof=True, persons=None, study="s1", swapped=None):
    """cv fold runs per head whose OOF predictions follow the *clean* labels of ``data`` (the
    photos); ``swapped``: a person whose incorrect_mask and normal files show each other."""
    train = load_train(data)
    fold = assign_folds(train, FoldSpec(k=k)).to_numpy()
    rng = np.random.default_rng(0)
    for head in HEADS:
        for f in (range(k) if folds is None else folds):
            rows = train[(fold == f) & (train["person"].isin(persons) if persons is not None else True)]
            frame = oof_frame(rows, head, rng, skill=SKILL) if oof else None
            if frame is not None and swapped is not None:
                a, b = (frame.index[frame["path"].str.contains(f"/{k}\\.") & rows["person"].eq(swapped).to_numpy()]
                        for k in ("incorrect_mask", "normal"))
                if len(a) and len(b):
                    cols = [c for c in frame.columns if c != "path"]
                    frame.loc[[a[0], b[0]], cols] = frame.loc[[b[0], a[0]], cols].to_numpy()
            log_model_run(client, art, head=head, phase="cv", fold=f, study=study, oof=frame)


def _noisy_copy(clean, out, person_gender, person_age):
    """The data set with a gender and an age planted wrong in train.csv."""
    shutil.copytree(clean, out)
    csv = out / "train" / "train.csv"
    t = pd.read_csv(csv, dtype=str, keep_default_na=False)
    g = t["id"] == person_gender
    t.loc[g, "gender"] = t.loc[g, "gender"].map({"male": "female", "female": "male"})
    a = t["id"] == person_age
    t.loc[a, "age"] = t.loc[a, "age"].map(lambda x: "45" if int(x) < 30 else "22")
    t.to_csv(csv, index=False)
    return out


@pytest.fixture(scope="module")
def planted_ws(demo_dir, tmp_path_factory):
    persons = sorted(load_train(demo_dir)["person"].unique())
    planted = {"gender": persons[3], "age": persons[7], "swap": persons[11]}
    noisy = _noisy_copy(demo_dir, tmp_path_factory.mktemp("noisy") / "data", planted["gender"], planted["age"])
    ws = tmp_path_factory.mktemp("ws")
    client = store(ws)
    write_manifest(noisy, ws)
    _log_folds(client, demo_dir, tmp_path_factory.mktemp("art"), swapped=planted["swap"])
    return noisy, ws, client, planted


def test_audit_finds_every_planted_error_and_writes_a_corrections_file(planted_ws, demo_dir):
    noisy, ws, client, planted = planted_ws
    res = audit(noisy, ws)
    top = res.suspects[res.suspects["field"] != "mask"]
    assert set(zip(top["person"], top["field"])) == {(p, f) for f, p in planted.items()}
    assert (res.suspects["score"] > 0.9).all()
    files = {p.name for p in res.out_dir.iterdir()}
    assert {"suspects.csv", "corrections_suggested.csv", "suspects.png"} <= files
    fixes = pd.read_csv(res.out_dir / "corrections_suggested.csv", dtype=str, keep_default_na=False)
    assert list(fixes.columns) == ["id", "field", "value", "note"]
    assert fixes.set_index("field").at["swap", "value"] == "incorrect_mask:normal"
    # read back by the --corrections loader on the noisy labels, it undoes the planted errors
    fixed = apply_corrections(load_train(noisy), res.out_dir / "corrections_suggested.csv")
    clean = load_train(demo_dir).set_index("path")
    assert (fixed.set_index("path")["gender"] == clean.loc[fixed["path"], "gender"]).all()
    swapped = fixed[fixed["person"] == planted["swap"]].set_index("kind")["mask"]
    assert swapped["incorrect_mask"] == 2 and swapped["normal"] == 1    # what the photos show
    run = client.get_run(res.mlflow_run_id)
    assert run.data.tags["stage"] == "audit" and run.info.status == "FINISHED"
    assert run.data.metrics["corrections_suggested"] == 3
    logged = {a.path for a in client.list_artifacts(res.mlflow_run_id, "audit")}
    assert {"audit/suspects.csv", "audit/corrections_suggested.csv", "audit/suspects.png"} <= logged


def test_audit_command_prints_where_it_wrote(planted_ws, capsys):
    noisy, ws, _, planted = planted_ws
    assert main(["audit", "--data", str(noisy), "--workspace", str(ws), "--study", "s1"]) == 0
    out = capsys.readouterr().out
    assert "3 suggested correction(s)" in out and "corrections_suggested.csv" in out
    assert main(["audit", "--data", str(noisy), "--workspace", str(ws), "--min-score", "2"]) == 2
    assert "--min-score" in capsys.readouterr().err


def test_audit_of_models_trained_on_other_labels_is_refused(planted_ws, demo_dir, tmp_path):
    noisy, ws, client, _ = planted_ws
    # the manifest holds the noisy labels; against the clean train.csv they are stale
    with pytest.raises(DataError, match="labels"):
        audit(demo_dir, ws)


@pytest.mark.parametrize("case, message", [
    ("single fold", "single fold"),
    ("no oof", "no cv fold run with out-of-fold predictions"),
    ("missing person", "have no out-of-fold prediction"),
    ("no study", "no finished cv runs"),
])
def test_bad_studies_are_named(case, message, demo_dir, tmp_path):
    client = store(tmp_path / "ws")
    write_manifest(demo_dir, tmp_path / "ws")
    persons = sorted(load_train(demo_dir)["person"].unique())
    if case == "single fold":
        _log_folds(client, demo_dir, tmp_path, k=2, folds=[0])
    elif case == "no oof":
        _log_folds(client, demo_dir, tmp_path, oof=False)
    elif case == "missing person":
        _log_folds(client, demo_dir, tmp_path, persons=persons[:-2])
    with pytest.raises(DataError, match=message):
        audit(demo_dir, tmp_path / "ws", AuditOptions(study="s1" if case != "no study" else None))
