"""`run` end to end on the demo data: real Ray, Tune + Optuna, MLflow (SQLite), ensemble."""
import time
from collections import Counter

import mlflow
import pandas as pd
import pytest

from orchestrator.cli import main
from core.demo_data import DemoSpec, write_demo_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    write_demo_data(root / "data", DemoSpec(train_persons=16, eval_persons=4))
    assert main(["run", "--data", str(root / "data"), "--workspace", str(root / "ws"), "--smoke-test"]) == 0
    return root


def test_submission_is_valid(smoke_run):
    sub = pd.read_csv(smoke_run / "ws" / "results" / "submission.csv")
    info = pd.read_csv(smoke_run / "data" / "eval" / "info.csv")
    assert list(sub.columns) == ["ImageID", "ans"]
    assert list(sub["ImageID"]) == list(info["ImageID"])
    assert sub["ans"].between(0, 17).all()


def test_report_and_plots(smoke_run):
    report = smoke_run / "ws" / "results" / "ensemble"
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) >= 2, pngs
    assert all((report / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert any(report.glob("*.md"))
    assert (smoke_run / "ws" / "results" / "eda" / "classes.png").is_file()


def test_mlflow_has_every_stage(smoke_run):
    client = mlflow.MlflowClient(f"sqlite:///{smoke_run / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("orchestrator")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    stages = {(r.data.tags.get("stage"), r.data.tags.get("head")) for r in runs}
    # the default run trains one joint model (a classifier per head)
    assert ("tune", "all") in stages and ("full", "all") in stages
    ens = [r for r in runs if r.data.tags.get("stage") == "ensemble"]
    # run's default: the full-data models (one per trial slot, 2 here) vote; the folds calibrate
    assert ens and ens[0].data.params["eval_vote"] == "full"
    full = [r for r in runs if r.data.tags.get("phase") == "full" and r.data.tags.get("role") == "trial"]
    per_retrain = Counter(r.data.tags["retrain"] for r in full)
    assert per_retrain and set(per_retrain.values()) == {2}
    tuned = [r for r in runs if r.data.tags.get("stage") == "tune" and r.data.tags.get("role") != "study"]
    assert all("val_f1" in r.data.metrics for r in tuned)


def test_run_audits_the_labels_and_the_audit_command_repeats_it(smoke_run):
    ws = smoke_run / "ws"
    audit_dir = ws / "results" / "audit"
    suspects = pd.read_csv(audit_dir / "suspects.csv")
    assert list(suspects.columns[:6]) == ["person", "image", "field", "label", "evidence", "score"]
    assert main(["audit", "--data", str(smoke_run / "data"), "--workspace", str(ws), "--study", "run-all"]) == 0
    fixes = pd.read_csv(audit_dir / "corrections_suggested.csv")
    assert list(fixes.columns) == ["id", "field", "value", "note"]
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("orchestrator")
    audits = client.search_runs([exp.experiment_id], "tags.stage = 'audit'")
    assert len(audits) >= 2 and {r.data.tags["study"] for r in audits} == {"run-all"}


def test_rerun_resumes_instead_of_retraining(smoke_run):
    t0 = time.time()
    client = mlflow.MlflowClient(f"sqlite:///{smoke_run / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("orchestrator")
    before = {r.info.run_id for r in client.search_runs([exp.experiment_id], "tags.stage = 'tune'", max_results=1000)}
    assert main(["run", "--data", str(smoke_run / "data"), "--workspace", str(smoke_run / "ws"), "--smoke-test"]) == 0
    after = {r.info.run_id for r in client.search_runs([exp.experiment_id], "tags.stage = 'tune'", max_results=1000)}
    assert after == before, "finished tune trials were rerun"
    assert time.time() - t0 < 600


def test_budget_is_honoured(tmp_path):
    write_demo_data(tmp_path / "data", DemoSpec(train_persons=12, eval_persons=3))
    budget = 200
    t0 = time.time()
    assert main(["run", "--data", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws"),
                 "--budget", f"{budget}s", "--model", "test_efficientnet", "--img-size", "32",
                 "--folds", "2", "--num-samples", "1"]) == 0
    elapsed = time.time() - t0
    assert elapsed <= 1.1 * budget, f"run took {elapsed:.0f} s of a {budget} s budget"
    assert (tmp_path / "ws" / "results" / "submission.csv").is_file()
