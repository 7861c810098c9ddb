"""The corrected label table: recorded in the workspace, read by every stage, hashed so that
nothing trained on old labels is mixed with new ones (core/label_table.py)."""
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
