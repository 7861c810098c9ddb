"""The MLflow run schema on a real SQLite store: names, tags, the experiment's kind, lifecycle."""
import pytest

from results import run_schema as rs
from mlflow_runs import store


def test_trial_run_names_say_head_phase_fold_and_trial():
    assert rs.trial_run_name("age", "cv", 3, "7d9e8_00000") == "age · cv · fold 3 · 7d9e8_00000"
    assert rs.trial_run_name("all", "full", -1, "ab_00001") == "all · full · all data · ab_00001"
    tags = rs.trial_tags(head="age", fold=-1, study="s", trial_id="t", phase="full", config_json="{}",
                         parent_run_id="p" * 32)
    assert tags["fold"] == "all" and tags["stage"] == "full" and tags["role"] == rs.TRIAL
    assert tags["mlflow.parentRunId"] == "p" * 32


def test_experiment_is_tagged_as_model_training_also_when_it_existed(tmp_path):
    client = store(tmp_path)          # an experiment made before the schema's tags
    uri = client._tracking_client.tracking_uri
    exp_id = rs.ensure_experiment(uri)
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "role=study" in tags["mlflow.note.content"]
    assert rs.ui_url("http://127.0.0.1:5000/", exp_id).endswith(f"/#/experiments/{exp_id}?workflowType=machine_learning")


def test_parent_is_reused_and_runs_never_stay_running(tmp_path):
    client = store(tmp_path)
    uri = client._tracking_client.tracking_uri
    exp_id = rs.ensure_experiment(uri)
    parent = rs.open_parent(uri, exp_id, study="s", phase="cv", head="age")
    assert client.get_run(parent).info.run_name == "age · cv · study s"
    rs.close_parent(uri, parent, "KILLED")
    assert rs.open_parent(uri, exp_id, study="s", phase="cv", head="age") == parent   # a resume reopens it
    assert client.get_run(parent).info.status == "RUNNING"
    ok = rs.start_run(client, exp_id, role="audit", name="audit")
    with rs.run_status(client, ok):
        pass
    failed = rs.start_run(client, exp_id, role="audit", name="audit")
    with pytest.raises(ValueError), rs.run_status(client, failed):
        raise ValueError("boom")
    killed = rs.start_run(client, exp_id, role="audit", name="audit")
    with pytest.raises(KeyboardInterrupt), rs.run_status(client, killed):
        raise KeyboardInterrupt
    assert [client.get_run(r).info.status for r in (ok, failed, killed)] == ["FINISHED", "FAILED", "KILLED"]
