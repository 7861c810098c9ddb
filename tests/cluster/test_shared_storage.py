"""Shared-storage options and the local-path-on-multi-node warning (no Ray needed)."""
import logging

from mlflow.tracking import MlflowClient

from core.workspace import ARTIFACTS_ENV, STORAGE_ENV, Workspace
from orchestrator.cli import _export_storage, build_parser
from orchestrator.infra.storage import is_shared, stage_locations, unshared
from orchestrator.study.tracking_outage import _write_marker, check_after_fit, outage_recorded
from results.tracking import ensure_experiment

MOUNTS = """/dev/nvme0n1p1 / ext4 rw,relatime 0 0
fs-0abc.efs.us-west-2.amazonaws.com:/ /mnt/shared nfs4 rw,vers=4.1 0 0
mountpoint-s3 /mnt/bucket fuse rw 0 0
tmpfs /mnt/shared/tmp tmpfs rw 0 0
"""


def test_local_paths_warn_only_with_nodes_on_several_hosts(tmp_path):
    ws = Workspace("/home/ubuntu/ws", storage="s3://bucket/tune")
    locs = stage_locations(ws, "sqlite:////home/ubuntu/ws/mlflow.db")
    assert unshared(locs, hosts=1, mounts=MOUNTS) == []          # one machine: local is shared
    msgs = unshared(locs, hosts=3, mounts=MOUNTS)
    assert len(msgs) == 2                                        # workspace + SQLite store, not s3
    assert "is /home/ubuntu/ws," in msgs[0] and "(ext4)" in msgs[0] and "3 hosts" in msgs[0]
    assert "--storage s3://" in msgs[0] and "the MLflow store" in msgs[1]
    assert list(stage_locations(ws, tune=False)) == ["the workspace (crop cache, folds)"]   # preprocess
    ok = Workspace("/mnt/shared/ws", storage="/mnt/bucket/tune")
    assert unshared(stage_locations(ok, "http://10.0.0.5:5000"), hosts=3, mounts=MOUNTS) == []
    # the innermost mount decides: a tmpfs inside the NFS mount is local
    assert not is_shared("/mnt/shared/tmp/x", MOUNTS) and is_shared("/mnt/shared/x", MOUNTS)


def test_storage_options_reach_every_workspace(tmp_path, monkeypatch):
    for env in (STORAGE_ENV, ARTIFACTS_ENV):   # setenv first: monkeypatch then restores "unset"
        monkeypatch.setenv(env, "")
        monkeypatch.delenv(env)
    assert Workspace(tmp_path).tune_storage == str(tmp_path / "tune")
    args = build_parser().parse_args(["tune", "--head", "age", "--workspace", str(tmp_path),
                                      "--storage", "s3://bucket/tune", "--artifact-location", str(tmp_path / "art")])
    _export_storage(args)
    ws = Workspace(tmp_path)
    assert ws.tune_storage == "s3://bucket/tune" and ws.tune_experiment("age-search") == "s3://bucket/tune/age-search"
    assert ws.tune == tmp_path / "tune" and ws.artifact_location == str(tmp_path / "art")
    nfs = Workspace(tmp_path, storage=str(tmp_path / "nfs" / "tune"))
    assert nfs.tune == tmp_path / "nfs" / "tune" and nfs.tune_storage == str(nfs.tune)


def test_artifact_location_is_used_for_new_experiments_only(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "shared", tmp_path / "local", location=str(tmp_path / "nfs" / "art"))
    assert MlflowClient(uri).get_experiment(exp).artifact_location == (tmp_path / "nfs" / "art").as_uri()
    with caplog.at_level(logging.WARNING):
        assert ensure_experiment(uri, "shared", location="s3://bucket/other") == exp
    assert "keeps its artifact location" in caplog.text and "--experiment NEW_NAME" in caplog.text


class _Result:
    def __init__(self, error):
        self.error = error


def test_outage_marker_only_when_trials_failed_and_the_server_is_gone(tmp_path):
    exp = str(tmp_path / "study-search")
    (tmp_path / "study-search").mkdir()
    up = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check_after_fit(up, exp, [_Result(RuntimeError("boom"))], "resume")   # store answers: a plain failure
    assert not outage_recorded(exp)
    _write_marker(exp, {"x": 1})
    assert outage_recorded(exp)
    check_after_fit("http://127.0.0.1:9", exp, [_Result(None)], "resume")  # nothing failed: marker cleared
    assert not outage_recorded(exp)
    try:
        check_after_fit("http://127.0.0.1:9", exp, [_Result(RuntimeError("x")), _Result(None)], "tune --resume")
        raise AssertionError("no TrackingError")
    except Exception as exc:   # noqa: BLE001 - the type is checked below
        assert type(exc).__name__ == "TrackingError"
        assert "1 of 2 trials failed" in str(exc) and exp in str(exc) and "`tune --resume`" in str(exc)
    assert outage_recorded(exp)
