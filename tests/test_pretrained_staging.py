"""--pretrained FILE is staged once into the workspace: trials run in their own folder (and on
other nodes), so they must never see the path as the user typed it."""
from pathlib import Path

import torch

from orchestrator.cli import main
from results.tracking import find_runs
from trainables.pretrained import stage_weights

from conftest import workspace_sharing_crops


def test_a_relative_weights_file_trains_in_every_trial(crops_ws, tmp_path, monkeypatch):
    """`tune --pretrained w.pth` typed in the folder that holds w.pth: the trial (which runs in
    its trial folder) loads the staged copy in the workspace instead of failing."""
    import timm
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path / "ws").root
    monkeypatch.chdir(tmp_path)
    torch.save(timm.create_model("test_efficientnet").state_dict(), "w.pth")
    rc = main(["tune", "--head", "all", "--smoke-test", "--phase", "search", "--num-samples", "1",
               "--pretrained", "w.pth", "--data", str(data), "--workspace", str(ws)])
    assert rc == 0
    [run] = [r for _, r in find_runs(f"sqlite:///{ws.resolve()}/mlflow.db", head="all", phase="search").iterrows()]
    assert run["status"] == "FINISHED"
    staged = Path(run["params.pretrained"])
    assert staged.is_absolute() and staged.parent == ws.resolve() / "weights" and staged.name.endswith("-w.pth")
    assert staged.read_bytes() == (tmp_path / "w.pth").read_bytes()


def test_staging_copies_a_file_once_and_leaves_other_sources_alone(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"weights")
    first = stage_weights(str(tmp_path / "a.pth"), tmp_path / "ws" / "weights")
    assert stage_weights(str(tmp_path / "a.pth"), tmp_path / "ws" / "weights") == first
    (tmp_path / "a.pth").write_bytes(b"other weights")   # new bytes, same name: a new copy
    assert stage_weights(str(tmp_path / "a.pth"), tmp_path / "ws" / "weights") != first
    assert [stage_weights(s, tmp_path) for s in ("none", "hub", "lite0")] == ["none", "hub", "lite0"]
