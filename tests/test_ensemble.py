"""The ensemble's run selection, OOF assembly and error paths on a real MLflow SQLite store."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow_runs import joint_oof_frame, log_model_run, log_study, oof_frame, store, write_manifest

from core.dataset import load_train
from core.errors import DataError
from core.manifest import read_manifest
from core.workspace import Workspace
from orchestrator.stages.ensemble import eval_crops, oof_predictions
from results.selection import check_artifacts, choose_models


@pytest.fixture(scope="module")
def study_ws(demo_dir, tmp_path_factory):
    """One workspace with a manifest and a 3-fold study (cv + full runs) for every head."""
    ws = tmp_path_factory.mktemp("ws")
    client = store(ws)
    write_manifest(demo_dir, ws)
    ids = log_study(client, demo_dir, tmp_path_factory.mktemp("art"), k=2)
    return ws, client, ids


def test_default_selection_is_cv_folds_plus_full(study_ws):
    ws, client, ids = study_ws
    chosen = choose_models(client)
    for head, models in chosen.items():
        assert [m.run_id for m in models] == ids[head]
        assert [m.phase for m in models] == ["cv"] * 2 + ["full"]
        assert all(m.source == "default" for m in models)
    no_full = choose_models(client, include_full=False)
    assert all(len(m) == 2 and all(x.has_oof for x in m) for m in no_full.values())


def test_newest_study_and_named_study(study_ws, tmp_path, demo_dir):
    ws, client, ids = study_ws
    ws2 = tmp_path / "ws2"
    c2 = store(ws2)
    old = log_study(c2, demo_dir, tmp_path / "a", study="old", k=2, full=False)
    new = log_study(c2, demo_dir, tmp_path / "b", study="new", k=2)
    assert [m.run_id for m in choose_models(c2)["age"]] == new["age"]
    assert [m.run_id for m in choose_models(c2, study="old")["age"]] == old["age"]


def test_a_rerun_fold_votes_once(tmp_path, demo_dir):
    client = store(tmp_path / "ws")
    first = log_model_run(client, tmp_path, head="mask", phase="cv", fold=0)
    second = log_model_run(client, tmp_path, head="mask", phase="cv", fold=0)
    failed = log_model_run(client, tmp_path, head="mask", phase="cv", fold=1, status="FAILED")
    for h in ("gender", "age"):
        log_model_run(client, tmp_path, head=h, phase="cv", fold=0)
    # a fold that never finished is not left out in silence: the OOF rows would miss its persons
    with pytest.raises(DataError, match=f"cv fold 1 has no finished run \\(MLflow run {failed} is FAILED\\)"):
        choose_models(client)
    again = log_model_run(client, tmp_path, head="mask", phase="cv", fold=1)   # its resumed or rerun trial
    assert [m.run_id for m in choose_models(client)["mask"]] == [second, again]
    assert first != second


def test_pick_by_run_ids_filter_and_alias(study_ws):
    ws, client, ids = study_ws
    # run ids: age gets just two fold models, the other heads keep the default
    chosen = choose_models(client, [ids["age"][0], ids["age"][2]])
    assert [(m.run_id, m.source) for m in chosen["age"]] == [(ids["age"][0], "run id"), (ids["age"][2], "run id")]
    assert [m.run_id for m in chosen["mask"]] == ids["mask"]
    # a filter as typed into the MLflow UI search box
    chosen = choose_models(client, ["tags.head = 'gender' and tags.fold = '1'"])
    assert [m.run_id for m in chosen["gender"]] == [ids["gender"][1]]
    # a registered model with an alias, as set in the UI
    client.create_registered_model("age-head")
    mv = client.create_model_version("age-head", f"runs:/{ids['age'][2]}/model", run_id=ids["age"][2])
    client.set_registered_model_alias("age-head", "champion", mv.version)
    chosen = choose_models(client, ["models:/age-head@champion", f"models:/age-head/{mv.version}"])
    assert [(m.run_id, m.phase, m.source) for m in chosen["age"]] == [(ids["age"][2], "full", "models:/age-head@champion")]


def test_selection_errors_name_what_is_missing(study_ws):
    ws, client, ids = study_ws
    ghost = "0123456789abcdef0123456789abcdef"
    with pytest.raises(DataError, match=f"MLflow run {ghost} does not exist"):
        choose_models(client, [ids["age"][0], ghost])
    with pytest.raises(DataError, match="models:/age-head@nobody: no such registered model version"):
        choose_models(client, ["models:/age-head@nobody"])
    with pytest.raises(DataError, match="models:/nope@champion: no such registered model version"):
        choose_models(client, ["models:/nope@champion"])
    with pytest.raises(DataError, match="matches no model run"):
        choose_models(client, ["tags.study = 'never'"])
    with pytest.raises(DataError, match="is not valid"):
        choose_models(client, ["tags.head === oops"])
    with pytest.raises(DataError, match="head mask has no models: no finished cv runs tagged head=mask in study 'zzz'"):
        choose_models(client, study="zzz")


def test_head_with_no_models_and_missing_model_file(tmp_path):
    client = store(tmp_path / "ws")
    log_model_run(client, tmp_path, head="mask", phase="cv", fold=0)
    log_model_run(client, tmp_path, head="gender", phase="cv", fold=0)
    with pytest.raises(DataError, match="head age has no models.*tune --head age"):
        choose_models(client)
    rid = log_model_run(client, tmp_path, head="age", phase="cv", fold=0, model=False)
    with pytest.raises(DataError, match=f"MLflow run {rid} \\(head age, phase cv\\) has no logged model 'model' "
                       "\\(nor an artifact model/model.pt of older stores\\)"):
        check_artifacts(client, choose_models(client))
    # a fold run without its out-of-fold predictions is named too
    with pytest.raises(DataError, match="\\(head mask, phase cv fold 0\\) has no artifact oof/predictions.parquet"):
        oof_predictions(client, choose_models(client), pd.DataFrame(), tmp_path / "t", "soft")
    with pytest.raises(DataError, match="experiment 'other' does not exist"):
        choose_models(client, experiment="other")


def test_an_older_stores_loose_model_file_still_loads_but_is_not_promoted(tmp_path):
    """Runs of stores written before logged models keep model/model.pt: the ensemble's loader
    reads it, and `promote` names why it cannot register it."""
    from orchestrator.stages.promote import promote
    from results.tracking import download_model
    from trainables.models import load_model_file
    client = store(tmp_path / "ws")
    rid = log_model_run(client, tmp_path / "art", head="age", phase="cv", fold=0, legacy=True)
    uri = Workspace(tmp_path / "ws").tracking_uri()
    model, cfg = load_model_file(download_model(uri, rid, tmp_path / "dl"))
    assert cfg.head == "age" and model.num_classes == 3
    with pytest.raises(DataError, match="has no logged model 'model' \\(runs of older stores keep a loose"):
        promote(uri, model=rid)


def test_oof_covers_every_training_image_once(study_ws, demo_dir, tmp_path):
    ws, client, ids = study_ws
    train = read_manifest(Workspace(ws).manifest).query("split == 'train'").set_index("path")
    oof = oof_predictions(client, choose_models(client), train, tmp_path, "soft")
    assert oof.log_probs.shape == (len(train), 18) and sorted(oof.paths) == sorted(train.index)
    assert np.array_equal(oof.y, train.loc[oof.paths, "label"].to_numpy())
    assert np.array_equal(oof.persons, train.loc[oof.paths, "person"].to_numpy())
    assert oof.heads["gender"].shape == (len(train), 2)
    # the OOF leans to the truth, so the joint argmax beats chance by far
    assert np.mean(oof.log_probs.argmax(1) == oof.y) > 0.3


def test_oof_of_two_runs_on_one_image_is_voted(tmp_path, demo_dir):
    train = load_train(demo_dir).iloc[:20]
    client = store(tmp_path / "ws")
    rng = np.random.default_rng(0)
    a, b = oof_frame(train, "age", rng), oof_frame(train, "age", rng)
    ra = log_model_run(client, tmp_path, head="age", phase="search", fold=0, oof=a)
    rb = log_model_run(client, tmp_path, head="age", phase="search", fold=0, oof=b)
    others = [log_model_run(client, tmp_path, head=h, phase="cv", fold=0, oof=oof_frame(train, h, rng))
              for h in ("mask", "gender")]
    chosen = choose_models(client, [ra, rb, *others])
    oof = oof_predictions(client, chosen, train.set_index("path"), tmp_path / "t", "soft")
    order = np.argsort(train["path"].to_numpy())
    p = ["p0", "p1", "p2"]
    expected = (a[p].iloc[order].to_numpy() + b[p].iloc[order].to_numpy()) / 2
    assert np.allclose(oof.heads["age"], expected)


def test_a_joint_model_votes_for_every_head_with_its_slice(tmp_path, demo_dir):
    """Runs tagged head=all: each fold's OOF table holds p0..p7, and each head reads its slice;
    every full-data model of the newest retrain votes, an older retrain's does not."""
    train = load_train(demo_dir)
    fold = np.arange(len(train)) % 2
    client = store(tmp_path / "ws")
    rng = np.random.default_rng(0)
    frames = [joint_oof_frame(train[fold == f], rng) for f in range(2)]
    cv = [log_model_run(client, tmp_path, head="all", phase="cv", fold=f, oof=frames[f]) for f in range(2)]
    log_model_run(client, tmp_path, head="all", phase="full", fold=-1, tags={"retrain": "old"})
    full = [log_model_run(client, tmp_path, head="all", phase="full", fold=-1, tags={"retrain": "new"})
            for _ in range(2)]
    chosen = choose_models(client)
    for head, models in chosen.items():
        ids = [m.run_id for m in models]
        assert ids[:2] == cv and sorted(ids[2:]) == sorted(full) and {m.head for m in models} == {head}
        assert {m.model_target for m in models} == {"all"}
    oof = oof_predictions(client, chosen, train.set_index("path"), tmp_path / "t", "soft")
    both = pd.concat(frames).set_index("path").loc[oof.paths]
    assert np.allclose(oof.heads["mask"], both[["p0", "p1", "p2"]].to_numpy())
    assert np.allclose(oof.heads["gender"], both[["p3", "p4"]].to_numpy())
    assert np.allclose(oof.heads["age"], both[["p5", "p6", "p7"]].to_numpy())
    # a run id of a joint model picked by hand votes in every head too
    picked = choose_models(client, [cv[0]])
    assert all([m.run_id for m in ms] == [cv[0]] for ms in picked.values())


def test_eval_vote_full_keeps_the_full_data_models_and_names_a_head_without_one(study_ws):
    from orchestrator.stages.ensemble import eval_voters
    ws, client, ids = study_ws
    chosen = choose_models(client)
    assert eval_voters(chosen, "all") == chosen
    full = eval_voters(chosen, "full")
    assert all([m.run_id for m in ms] == ids[h][-1:] for h, ms in full.items())
    with pytest.raises(DataError, match="head\\(s\\) mask, gender, age have no full-data model"):
        eval_voters(choose_models(client, include_full=False), "full")


def test_eval_image_missing_from_crops_is_named(demo_copy, tmp_path):
    ws = Workspace(tmp_path / "ws")
    df = write_manifest(demo_copy, ws.root)
    order, crops = eval_crops(demo_copy, ws, df)
    assert order == pd.read_csv(demo_copy / "eval" / "info.csv")["ImageID"].tolist()
    assert all(c.is_file() for c in crops)
    gone, no_crop, no_file = order[0], order[1], order[2]
    broken = df[df["image_id"] != gone].copy()
    broken.loc[broken["image_id"] == no_crop, ["crop", "error"]] = ["", "unreadable JPEG"]
    (ws.crops / df.loc[df["image_id"] == no_file, "crop"].item()).unlink()
    with pytest.raises(DataError) as err:
        eval_crops(demo_copy, ws, broken)
    text = str(err.value)
    assert f"eval image {gone} (eval/info.csv) is not in the crop manifest" in text
    assert f"eval image {no_crop} has no crop (unreadable JPEG)" in text
    assert f"eval image {no_file}: crop file" in text and "re-run `python -m orchestrator preprocess`" in text


def test_ensemble_end_to_end_on_real_runs(study_ws, demo_dir, tmp_path):
    """Real model files (trainables' format) and OOF artifacts -> submission, report, MLflow run."""
    from orchestrator.stages.ensemble import EnsembleOptions, ensemble
    ws, client, ids = study_ws
    res = ensemble(demo_dir, ws, EnsembleOptions())
    sub = pd.read_csv(res.submission)
    info = pd.read_csv(demo_dir / "eval" / "info.csv")
    assert sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert sub["ans"].between(0, 17).all()
    m = res.metrics
    assert m["oof_images"] == len(load_train(demo_dir))
    assert m["oof_f1_after"] >= m["oof_f1_before"] > 0.2
    assert 0 < m["oof_f1_after_heldout"] <= m["oof_f1_after"]
    for f in ("report.md", "confusion.png", "class_counts.png", "per_class.csv", "class_counts.csv", "models.csv"):
        assert (res.report_dir / f).is_file(), f
    counts = pd.read_csv(res.report_dir / "class_counts.csv")
    assert counts["eval_pred"].sum() == len(info) and counts["train"].sum() == m["oof_images"]
    assert len(res.models) == 9 and set(res.models["phase"]) == {"cv", "full"}
    run = client.get_run(res.mlflow_run_id)
    assert run.data.tags["stage"] == "ensemble" and run.info.status == "FINISHED"
    assert run.data.metrics["oof_f1_after"] == pytest.approx(m["oof_f1_after"])
    arts = {a.path for a in client.list_artifacts(res.mlflow_run_id)}
    assert {"submission.csv", "report", "calibration.json"} <= arts
    cal = json.loads(Path(client.download_artifacts(res.mlflow_run_id, "calibration.json", str(tmp_path))).read_text())
    assert len(cal["fitted_offsets"]) == 18 and cal["applied"] == bool(run.data.metrics["calibration_applied"])
    assert (res.offsets is not None) == cal["applied"]
    # the ensemble run itself never votes in a later ensemble
    assert len(choose_models(client)["age"]) == 3
    # these runs carry logged models as `run` logs them; the whole ensemble, logged as one
    # pyfunc model, predicts what submission.csv holds
    import mlflow

    from results.run_schema import global_tracking_uri
    assert res.model_id and client.get_run(res.mlflow_run_id).outputs.model_outputs[0].model_id == res.model_id
    from orchestrator.stages.promote import promote
    p = promote(Workspace(ws).tracking_uri())   # registers the newest ensemble, alias @champion
    assert (p.model_id, p.is_ensemble, p.uri) == (res.model_id, True, "models:/orchestrator-ensemble@champion")
    with global_tracking_uri(Workspace(ws).tracking_uri()):
        model = mlflow.pyfunc.load_model(p.uri)
    _, crops = eval_crops(demo_dir, Workspace(ws), read_manifest(Workspace(ws).manifest))
    pred = model.predict(pd.DataFrame({"image": [c.read_bytes() for c in crops]}))
    assert pred["class"].tolist() == sub["ans"].tolist()
    assert set(pred.columns) >= {"class", "mask", "gender", "age", "label"}
    # `reproduce`: its logged runs and options again give the same OOF metrics and answers
    from orchestrator.stages.reproduce import reproduce
    again = reproduce(demo_dir, Workspace(ws), res.mlflow_run_id)
    assert again.exact and len(again.table) == 5, again.table


def test_ensemble_cli_hard_vote_without_calibration_or_full(study_ws, demo_dir, tmp_path):
    from orchestrator.cli import main
    ws, client, ids = study_ws
    out = tmp_path / "sub.csv"
    rc = main(["ensemble", "--data", str(demo_dir), "--workspace", str(ws), "--vote", "hard",
               "--no-calibrate", "--no-full", "--eval-vote", "all", "--tta", "none", "--submission", str(out)])
    assert rc == 0 and len(pd.read_csv(out)) == len(pd.read_csv(demo_dir / "eval" / "info.csv"))
    per_class = pd.read_csv(Workspace(ws).results / "ensemble" / "per_class.csv")
    assert (per_class["offset"] == 0).all()
    models = pd.read_csv(Workspace(ws).results / "ensemble" / "models.csv")
    assert set(models["phase"]) == {"cv"}


def test_ensemble_cli_reports_missing_runs_and_bad_options(study_ws, demo_dir, capsys):
    from orchestrator.cli import main
    ws, client, ids = study_ws
    ghost = "fedcba9876543210fedcba9876543210"
    rc = main(["ensemble", "--data", str(demo_dir), "--workspace", str(ws), "--runs", ghost])
    assert rc == 2 and f"MLflow run {ghost} does not exist" in capsys.readouterr().err
    rc = main(["ensemble", "--data", str(demo_dir), "--workspace", str(ws), "--tta", "hflip,spin"])
    assert rc == 2 and "--tta 'spin' is not a test-time augmentation; valid: hflip" in capsys.readouterr().err


def test_calibration_is_applied_only_when_it_holds_up_on_other_persons():
    from orchestrator.stages.ensemble import EnsembleOptions, Oof, calibrate
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 18, n)
    noise = rng.normal(0, 1, (n, 18))
    noise[np.arange(n), y] += 0.8
    out = calibrate(Oof(np.arange(n), noise, y, np.arange(n) // 7, {}), EnsembleOptions())
    assert not out.applied and out.offsets is None and out.fitted.f1_after > out.fitted.f1_before
    assert out.status.startswith("fitted, not applied (overfits)")
    # rare classes under-predicted by a shared bias: offsets that generalise
    rare = np.isin(y, [2, 5, 8, 11, 14, 17])
    logp = rng.normal(0, 0.5, (n, 18))
    logp[np.arange(n), y] += 2.0
    logp[:, [2, 5, 8, 11, 14, 17]] -= 2.5
    assert rare.any()
    out = calibrate(Oof(np.arange(n), logp, y, np.arange(n) // 7, {}), EnsembleOptions())
    assert out.applied and out.status.startswith("applied") and out.heldout_f1 >= out.fitted.f1_before
    assert out.shrink in (0.5, 1.0) and np.array_equal(out.offsets, out.shrink * out.fitted.offsets)
    assert calibrate(None, EnsembleOptions()).status == "off (no out-of-fold predictions)"
    assert calibrate(None, EnsembleOptions(calibrate=False)).status == "off (--no-calibrate)"


def test_ensemble_cli_names_an_unreachable_tracking_server(demo_dir, tmp_path, capsys):
    from orchestrator.cli import main
    rc = main(["ensemble", "--data", str(demo_dir), "--workspace", str(tmp_path / "ws"),
               "--tracking-uri", "http://127.0.0.1:9"])
    assert rc == 2 and "http://127.0.0.1:9 is unreachable" in capsys.readouterr().err


def test_ensemble_on_ray_tasks_matches_the_local_run(study_ws, demo_dir, tmp_path):
    """One Ray task per model (a real local Ray, 1 CPU) gives the same submission."""
    from orchestrator.stages.ensemble import EnsembleOptions, ensemble
    ws, client, ids = study_ws
    one_fold = tuple(ids[h][0] for h in ids)     # one model per head keeps it quick
    local = ensemble(demo_dir, ws, EnsembleOptions(runs=one_fold, eval_vote="all", submission=tmp_path / "local.csv"))
    on_ray = ensemble(demo_dir, ws, EnsembleOptions(runs=one_fold, eval_vote="all", submission=tmp_path / "ray.csv",
                                                     use_ray=True, num_cpus=1))
    assert len(on_ray.models) == 3
    assert pd.read_csv(local.submission).equals(pd.read_csv(on_ray.submission))
    assert local.metrics == pytest.approx(on_ray.metrics, nan_ok=True)
