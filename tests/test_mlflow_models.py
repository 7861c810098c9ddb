"""A trial's model as an MLflow logged model (pyfunc, no pickle), on a real SQLite store:
linked to its run and metrics, one copy however often the best epoch changes, loadable by
every MLflow URI form, and picked by the ensemble through the registry."""
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow_runs import store

from results.run_schema import ensure_experiment, global_tracking_uri, logged_model_id
from results.selection import choose_models, model_file
from results.trial_log import TrialLogger
from trainables.config import RunContext, TrialConfig
from trainables.mlflow_model import example_crop, pyfunc_spec
from trainables.models import build_model, load_model_file, save_model_file
from trainables.predict import predict_probs


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Three trial runs (one per head) whose best model changed twice, as a trial logs it."""
    tmp = tmp_path_factory.mktemp("lm")
    client = store(tmp)
    uri = client._tracking_client.tracking_uri
    ensure_experiment(uri)
    runs = {}
    for head in ("mask", "gender", "age"):
        cfg = TrialConfig(head=head, model="test_efficientnet", img_size=32, epochs=2, batch_size=4, fold=1)
        ctx = RunContext(data=str(tmp), workspace=str(tmp), tracking_uri=uri, study="s", phase="cv")
        log = TrialLogger(ctx, cfg, trial_id=f"{head}_00000", trial_name="ignored")
        for epoch in (1, 2):
            f = save_model_file(tmp / head / f"{epoch}.pt", build_model(cfg, pretrained=""), cfg, best_epoch=epoch)
            log.log_metrics({"val_f1": 0.3 * epoch, "best_val_f1": 0.3 * epoch, "best_epoch": epoch}, epoch)
            log.log_model(f, pyfunc_spec(cfg), epoch)
        log.finish()
        runs[head] = (log.run_id, log.model_id, f)
    with global_tracking_uri(uri):   # for mlflow.pyfunc.load_model / register_model in the tests
        yield client, runs, tmp


def test_the_run_lists_one_logged_model_with_its_metrics_and_no_pickle(logged):
    client, runs, _ = logged
    run_id, model_id, _ = runs["age"]
    run = client.get_run(run_id)
    assert run.info.run_name == "age · cv · fold 1 · age_00000"
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id] == [logged_model_id(client, run)]
    lm = client.get_logged_model(model_id)
    assert lm.name == "model" and lm.source_run_id == run_id and lm.tags["head"] == "age"
    assert lm.params["lr"] == run.data.params["lr"]
    assert {(m.key, m.step) for m in lm.metrics} >= {("best_val_f1", 1), ("best_val_f1", 2)}
    folder = Path(lm.artifact_location.removeprefix("file://"))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "data/model.pt" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "trainables.mlflow_model"
    assert mlmodel["signature"]["inputs"] and (folder / "input_example.json").is_file()
    # the second best epoch replaced the first: one copy of the weights
    assert load_model_file(folder / "data" / "model.pt")[1].epochs == 2
    assert torch_extra(folder / "data" / "model.pt")["best_epoch"] == 2


def torch_extra(path):
    from trainables.models import read_model_extra
    return read_model_extra(path)


def test_every_mlflow_uri_loads_the_same_model(logged):
    client, runs, tmp = logged
    run_id, model_id, f = runs["gender"]
    model, cfg = load_model_file(f)
    crops = [example_crop(32), example_crop(40)]
    want = predict_probs(model, cfg, crops)
    version = mlflow.register_model(f"models:/{model_id}", "gender-head")
    client.set_registered_model_alias("gender-head", "champion", version.version)
    for uri in (f"runs:/{run_id}/model", f"models:/{model_id}", "models:/gender-head@champion",
                f"models:/gender-head/{version.version}"):
        got = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": crops}))
        np.testing.assert_allclose(got[[f"p{k}" for k in range(2)]].to_numpy(), want, atol=1e-6)
        assert got["gender"].tolist() == want.argmax(1).tolist()


def test_the_ensemble_picks_the_registered_version_and_reads_only_its_weights(logged, tmp_path):
    client, runs, _ = logged
    run_id, model_id, f = runs["mask"]
    version = mlflow.register_model(f"models:/{model_id}", "mask-head")
    client.set_registered_model_alias("mask-head", "champion", version.version)
    for item in ("models:/mask-head@champion", f"models:/mask-head/{version.version}", model_id,
                 f"runs:/{run_id}/model", run_id):
        chosen = choose_models(client, [item, runs["gender"][0], runs["age"][0]], include_full=False)
        (c,) = chosen["mask"]
        assert (c.run_id, c.model_id, c.fold, c.phase) == (run_id, model_id, "1", "cv"), item
        assert model_file(client, c, tmp_path / item.replace("/", "_")).read_bytes() == f.read_bytes()
