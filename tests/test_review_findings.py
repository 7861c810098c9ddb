"""Promises of README.md that a reading of the code found broken, each shown on the real path."""
from __future__ import annotations

import pytest

from conftest import workspace_sharing_crops


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024**2)   # "local": never join another cluster on this machine
    yield
    ray.shutdown()


@pytest.mark.slow
def test_tune_fails_when_every_search_trial_failed_before_logging(ray_local, crops_ws, tmp_path, monkeypatch, capsys):
    """A search whose only trial failed (here before its first epoch: the decoded crops it opens
    are cut short) leaves nothing to pick from: `tune --phase search` must not exit 0."""
    import orchestrator.study as study
    from orchestrator.cli import main
    from results.tracking import find_runs
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path / "ws")
    prepare = study.prepare

    def prepare_then_cut_the_cache(*a, **kw):
        plan = prepare(*a, **kw)
        for npy in (plan.ws.root / "cache").glob("crops_*.npy"):
            npy.write_bytes(npy.read_bytes()[:100])   # what every trial opens: cut short
        return plan
    monkeypatch.setattr(study, "prepare", prepare_then_cut_the_cache)
    rc = main(["tune", "--head", "gender", "--smoke-test", "--phase", "search", "--num-samples", "1",
               "--max-failures", "0", "--study", "allfail", "--data", str(data), "--workspace", str(ws.root),
               "--log-level", "WARNING"])
    assert find_runs(ws.tracking_uri(), study="allfail").empty   # the trial logged nothing
    assert rc == 1
    err = capsys.readouterr().err
    assert "No search trial finished" in err and "ValueError" in err and "--study NEW_NAME" in err
