"""Provenance: nothing stale is reused, the right studies vote, a study is pinned to
its inputs, the calibration is applied only when checked, and a trial can be reproduced."""
import json

import numpy as np
import pandas as pd
import pytest

from trainables.config import TrialConfig


# -- two-fold median epochs round half up, not to even ----------------------------------
@pytest.mark.parametrize("best, epochs", [([2, 3], 3), ([3, 4], 4), ([1, 2], 2), ([4, 4], 4), ([2, 3, 9], 3)])
def test_median_epoch_rounds_half_up(best, epochs):
    from orchestrator.stages.retrain import full_data_config
    cfg = json.dumps(TrialConfig("mask", epochs=10).to_dict())
    runs = pd.DataFrame({"metrics.best_epoch": [float(e) for e in best], "tags.config_json": cfg})
    got, best_epochs = full_data_config(runs)
    assert (got.epochs, best_epochs) == (epochs, sorted(best))


# -- calibration: applied only when its held-out check ran and passed -------------------
def _oof(persons: int, seed: int = 0):
    from orchestrator.stages.ensemble import Oof
    rng = np.random.default_rng(seed)
    n = persons * 7
    y = rng.integers(0, 18, n)
    logits = rng.normal(0, 1, (n, 18))
    logits[np.arange(n), y] += 1.0
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return Oof(np.array([f"p{i}" for i in range(n)]), logp, y, np.arange(n) // 7, {})


def test_calibration_without_a_heldout_check_is_not_applied():
    from orchestrator.stages.ensemble import EnsembleOptions, calibrate
    out = calibrate(_oof(persons=4), EnsembleOptions())
    assert out.fitted is not None and out.fitted.f1_after > out.fitted.f1_before   # offsets were fitted
    assert not out.applied and out.offsets is None
    assert "not checked" in out.status


# -- content-addressed caches ------------------------------------------------------------
def _grey(path, value, size=16):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)


def test_decoded_crops_follow_a_rewritten_crop_file(tmp_path):
    """The memmap is keyed by the crop files' content, not their names: a crop rewritten under
    its old name (grey 10 -> 250) is decoded again, and the old entry stays for whoever pinned it."""
    from core.workspace import Workspace
    from trainables.data import crop_cache
    ws = Workspace(tmp_path / "ws").make()
    names = [f"k/img{i}.jpg" for i in range(3)]   # JPEG, as preprocess writes crops (checked whole)
    for n in names:
        _grey(ws.crops / n, 10)
    assert round(float(crop_cache(ws, names, 8)[1].mean())) == 10
    import os
    import time
    time.sleep(0.01)
    _grey(ws.crops / names[1], 250)
    os.utime(ws.crops / names[1])
    again = crop_cache(ws, names, 8)
    assert round(float(again[1].mean())) == 250 and round(float(again[0].mean())) == 10
    assert len(list((ws.root / "cache").glob("*.npy"))) == 2
    before = {p: p.stat().st_mtime_ns for p in (ws.root / "cache").glob("*.npy")}
    crop_cache(ws, names, 8)   # unchanged input: nothing is decoded again
    assert {p: p.stat().st_mtime_ns for p in (ws.root / "cache").glob("*.npy")} == before


def test_folds_are_addressed_by_the_table_they_split(demo_dir, tmp_path):
    """A changed training table (one more person, or a corrected label) makes a new split file;
    the split an earlier study used stays as it was, and an unchanged table is never re-split."""
    from core.dataset import load_train
    from core.folds import FoldSpec, ensure_folds, fold_file, folds_key
    train = load_train(demo_dir)
    spec = FoldSpec(k=3)
    less = train[train["person"] != train["person"].iloc[0]]
    first = ensure_folds(less, tmp_path, spec)
    old = fold_file(tmp_path, spec, folds_key(less))
    mtime = old.stat().st_mtime_ns
    ensure_folds(less, tmp_path, spec)
    assert old.stat().st_mtime_ns == mtime                        # not recomputed
    ensure_folds(train, tmp_path, spec)                          # one person more: a new split
    new = fold_file(tmp_path, spec, folds_key(train))
    assert new != old and new.is_file() and old.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(pd.read_csv(old, dtype={"person": str}), first.reset_index(drop=True),
                                  check_dtype=False)
    relabelled = train.assign(label=np.where(np.arange(len(train)) == 0, (train["label"] + 1) % 18, train["label"]))
    assert folds_key(relabelled) != folds_key(train)             # corrections change the key too


# -- run votes with exactly the studies it trained; ensemble picks a study per head -----
def test_run_ensembles_the_studies_it_trained(demo_dir, tmp_path):
    """`run` (joint), `run --per-head`, then `run` again: the third ensemble votes with the joint
    study in every head, not with the newer per-head studies."""
    from mlflow_runs import joint_oof_frame, log_model_run, log_study, store

    from core.dataset import load_train
    from orchestrator.chain.studies import voting_studies
    from results.selection import choose_models
    client = store(tmp_path / "ws")
    uri = client.tracking_uri
    train = load_train(demo_dir)
    rng = np.random.default_rng(0)

    def joint(tag):   # a joint study's 2 folds + its full-data model (a retrain of its own)
        half = train["person"].isin(train["person"].unique()[::2]).to_numpy()
        ids = [log_model_run(client, tmp_path, head="all", phase="cv", fold=f, study="run-all",
                             oof=joint_oof_frame(train[half == (f == 0)], rng)) for f in (0, 1)]
        return ids + [log_model_run(client, tmp_path, head="all", phase="full", fold=-1, study="run-all",
                                    tags={"retrain": tag})]
    joint("r1")
    per_head = {h: f"run-{h}" for h in ("mask", "gender", "age")}
    for h, s in per_head.items():
        log_study(client, demo_dir, tmp_path / s, study=s, k=2)
    again = joint("r2")
    chosen = choose_models(client, study=voting_studies(uri, "run", ("all",), "", full=True))
    for head, models in chosen.items():
        assert {m.run_id for m in models} >= {again[2]} and {m.study for m in models} == {"run-all"}, head
    by_head = voting_studies(uri, "run", ("mask", "gender", "age"), "", full=True)
    assert by_head == per_head
    assert {m.study for m in choose_models(client, study=by_head)["age"]} == {"run-age"}
    # --per-head --heads age: mask and gender vote with the run's own earlier per-head studies
    assert voting_studies(uri, "run", ("age",), "", full=True) == per_head
    # --head-backbone gender=...: gender votes with its own model, mask and age with the joint one
    beside = voting_studies(uri, "run", ("all", "gender"), "", full=True)
    assert beside == {"mask": "run-all", "gender": "run-gender", "age": "run-all"}
    assert {h: {m.study for m in ms} for h, ms in choose_models(client, study=beside).items()} == {
        "mask": {"run-all"}, "gender": {"run-gender"}, "age": {"run-all"}}


def test_a_study_with_models_of_another_backbone_is_named_before_training(tmp_path):
    """`run --head-backbone gender=resnet10t-64`, then again with gender=lite0-96: run-gender holds
    resnet10t models, which the new ones would join; the check names the study and what changed."""
    from mlflow_runs import log_model_run, store

    from core.errors import DataError
    from orchestrator.chain.studies import check_model_settings, trained_settings
    from trainables.config import TrialConfig
    client = store(tmp_path / "ws")
    uri = client.tracking_uri
    older = {k: v for k, v in TrialConfig(head="gender", model="resnet10t", img_size=64).to_dict().items()
             if k not in ("age_head", "freeze")}   # a model logged before the fields existed
    log_model_run(client, tmp_path, head="gender", phase="cv", fold=0, study="run-gender",
                  tags={"config_json": json.dumps(older)})
    same = {"model": "resnet10t", "img_size": 64, "pretrained": "none", "age_head": "softmax", "batch_size": 64}
    check_model_settings("run", trained_settings(uri, "run", ("all", "gender")),
                         {"all": same | {"model": "tf_efficientnet_lite0"}, "gender": same})
    with pytest.raises(DataError, match=r"study 'run-gender' holds models trained with other settings \(model "
                                        r"resnet10t -> tf_efficientnet_lite0, img_size 64 -> 96, pretrained none -> "
                                        r"lite0\).*--study run-new"):
        check_model_settings("run", trained_settings(uri, "run", ("gender",)),
                             {"gender": same | {"model": "tf_efficientnet_lite0", "img_size": 96, "pretrained": "lite0"}})
    with pytest.raises(DataError, match=r"'run-gender' holds models trained with other settings \(freeze 0 -> 3\)"):
        check_model_settings("run", trained_settings(uri, "run", ("gender",)), {"gender": same | {"freeze": 3}})
    # a weights file is staged under a name of each run's own (the pins compare its content), and
    # "" is the old spelling of none: neither is a change
    staged = TrialConfig(head="all", model="resnet10t", img_size=64,
                         pretrained=str(tmp_path / "weights" / "0123456789abcdef-w.pt"))
    log_model_run(client, tmp_path, head="all", phase="cv", fold=0, study="run-all",
                  tags={"config_json": json.dumps(staged.to_dict())})
    check_model_settings("run", trained_settings(uri, "run", ("all", "gender")),
                         {"all": same | {"pretrained": "w.pt", "age_head": "softmax"},
                          "gender": same | {"pretrained": ""}})
    # a rerun without --age-head resumes the age head its studies trained with (here: softmax,
    # written before the field existed), where none trained yet run's default
    from orchestrator.chain.studies import resumed_age_head
    assert resumed_age_head(trained_settings(uri, "run", ("all", "gender"))) == "softmax"
    assert resumed_age_head(trained_settings(uri, "run", ("gender",))) is None
    assert resumed_age_head(trained_settings(uri, "other", ("all",))) is None


def test_a_partial_per_head_run_is_checked_before_training(tmp_path):
    """`run --per-head --heads age` votes mask and gender with the run's studies of the current
    labels (its own per-head ones, else the joint one), or stops before training, naming them."""
    from mlflow_runs import log_model_run, store

    from core.errors import DataError
    from orchestrator.chain.studies import study_prefix, voting_studies
    client = store(tmp_path / "ws")
    uri = client.tracking_uri
    with pytest.raises(DataError, match="(?s)head mask: 'run-mask' has no finished cv models and 'run-all' has no "
                                        "finished cv models.*--heads mask,gender,age"):
        voting_studies(uri, "run", ("age",), "new", full=True)
    for fold in (0, 1):
        log_model_run(client, tmp_path, head="all", phase="cv", fold=fold, study="run-all", tags={"labels": "old"})
    with pytest.raises(DataError, match="'run-all' has no full-data models"):
        voting_studies(uri, "run", ("age",), "old", full=True)
    assert voting_studies(uri, "run", ("age",), "old", full=False) == {"mask": "run-all", "gender": "run-all",
                                                                       "age": "run-age"}
    with pytest.raises(DataError, match="'run-all' was trained on another label table"):
        voting_studies(uri, "run", ("age",), "new", full=False)
    # the labels changed since run-all: the joint run trains the next study name
    assert study_prefix(uri, "run", ("all",), "old") == "run"
    assert study_prefix(uri, "run", ("all",), "new") == "run-2"
    log_model_run(client, tmp_path, head="all", phase="cv", fold=0, study="run-2-all", tags={"labels": "new"})
    assert study_prefix(uri, "run", ("all",), "new") == "run-2"     # its rerun finds it again
    assert study_prefix(uri, "run", ("all",), "newer") == "run-3"


def test_ensemble_study_per_head(demo_dir, tmp_path):
    from mlflow_runs import log_study, store

    from core.errors import DataError
    from orchestrator.cli import build_parser
    from results.selection import choose_models, parse_studies
    client = store(tmp_path / "ws")
    s1 = log_study(client, demo_dir, tmp_path / "a", study="s1", k=2)
    s2 = log_study(client, demo_dir, tmp_path / "b", study="s2", k=2)
    picked = parse_studies("mask=s1, gender=s2,age=s1")
    chosen = choose_models(client, study=picked)
    assert [m.run_id for m in chosen["mask"]] == s1["mask"]
    assert [m.run_id for m in chosen["gender"]] == s2["gender"]
    assert [m.run_id for m in chosen["age"]] == s1["age"]
    assert parse_studies("s2") == "s2"                 # one name still means every head
    partial = choose_models(client, study=parse_studies("age=s1"))   # others: the newest study
    assert [m.run_id for m in partial["age"]] == s1["age"] and [m.run_id for m in partial["mask"]] == s2["mask"]
    for bad, why in (("nose=s1", "unknown head 'nose'"), ("mask=", "no study name"), ("mask=a,mask=b", "twice")):
        with pytest.raises(DataError, match=why):
            parse_studies(bad)
    args = build_parser().parse_args(["ensemble", "--study", "mask=s1,gender=s2,age=s1"])
    assert args.study == "mask=s1,gender=s2,age=s1"


# -- OOF and eval predictions use the same views -----------------------------------------
def test_oof_holds_every_view_and_the_ensemble_takes_its_own(crops_ws, tmp_path):
    """A trial's OOF table keeps each TTA view apart; the ensemble averages the views it predicts
    the eval images with (``--tta none``: the original view only), so the calibration offsets are
    fitted on probabilities like those they are applied to."""
    from mlflow_runs import log_model_run, store

    from core.dataset import load_train
    from core.folds import FoldSpec, ensure_folds
    from orchestrator.stages.ensemble import head_oof
    from results.selection import ChosenModel
    from search_spaces import SMOKE, recipe_config
    from trainables.predict import predict_probs
    from trainables.trainer import TrialState, build_fold_parts, oof_of, run_folds_epoch
    data, ws = crops_ws
    ensure_folds(load_train(data), ws.root, FoldSpec(2, 777))
    parts = build_fold_parts(recipe_config("gender", folds=2, **SMOKE), ws)
    oof = oof_of(parts, run_folds_epoch(parts, TrialState()))
    crops = dict(zip(parts[0].data.paths, pd.read_parquet(ws.manifest).set_index("path").loc[parts[0].data.paths, "crop"]))
    files = [ws.crops / crops[p] for p in oof["path"]]
    model = parts[0].model.cpu()
    for tta, cols in (((), ["orig_p0", "orig_p1"]), (("hflip",), ["p0", "p1"])):
        eval_like = predict_probs(model, parts[0].cfg, files, tta=tta)
        np.testing.assert_allclose(oof[cols].to_numpy(), eval_like, atol=1e-5)
    client = store(tmp_path / "ws")
    rid = log_model_run(client, tmp_path, head="gender", phase="cv", fold=0, oof=oof)
    chosen = [ChosenModel("gender", rid, "cv", "0", "s1", "run id", "gender")]
    for tta, cols in (((), ["orig_p0", "orig_p1"]), (("hflip",), ["p0", "p1"])):
        got = head_oof(client, chosen, tmp_path / "dl", "soft", tta).loc[oof["path"]]
        np.testing.assert_allclose(got.to_numpy(), oof[cols].to_numpy(), atol=1e-6)


# -- a study is pinned to its inputs -----------------------------------------------------
@pytest.fixture
def own_ws(crops_ws, tmp_path):
    """A private copy of the session's preprocessed workspace (and its data) that a test may change."""
    import shutil

    from core.workspace import Workspace
    data, ws = crops_ws
    shutil.copytree(data, tmp_path / "data")
    shutil.copytree(ws.root, tmp_path / "ws", ignore=shutil.ignore_patterns("cache", "mlflow.db", "mlartifacts", "tune"))
    return tmp_path / "data", Workspace(tmp_path / "ws")


def test_a_study_refuses_other_inputs_and_names_a_new_study(own_ws, caplog):
    """One person more in train.csv moves others to another fold: a resume of the study (or its
    next phase) stops, says what changed and offers a free name; trials keep reading the split
    the study pinned."""
    from core.errors import DataError
    from orchestrator.stages.tune import TuneOptions, prepare
    from orchestrator.study.pins import pin_file, read_pins
    from trainables.data import load_head_data
    data, ws = own_ws
    opts = TuneOptions(smoke_test=True, study="s", resume=True)
    plan = prepare(data, ws, "gender", opts)
    pins = read_pins(ws, "s")
    assert pins == plan.pins and plan.context("cv", "").pins == pins.as_dict()
    assert prepare(data, ws, "gender", opts).pins == pins            # same inputs: goes on
    record = json.loads(pin_file(ws, "s").read_text())
    pin_file(ws, "s").write_text(json.dumps(record | {"pins": record["pins"] | {"code": "0" * 40}}))
    prepare(data, ws, "gender", opts)                                # other code (a fix): goes on, warned
    assert f"study 's' goes on with other code than it started with (code {'0' * 40} -> " in caplog.text
    pin_file(ws, "s").write_text(json.dumps(record))
    split = load_head_data(plan.base, ws, pins=pins.as_dict()).fold.copy()
    csv = data / "train" / "train.csv"
    train, manifest = pd.read_csv(csv, dtype=str), pd.read_parquet(ws.manifest)
    gone = manifest["path"].str.startswith(f"train/images/{train['path'].iloc[-1]}/")
    train.iloc[:-1].to_csv(csv, index=False)                        # the data set changed (one person
    manifest[~gone].to_parquet(ws.manifest, index=False)             # fewer), preprocessed again
    with pytest.raises(DataError, match=r"study 's' was made from other inputs.*folds .* -> .*--study s-2"):
        prepare(data, ws, "gender", opts)
    with pytest.raises(DataError, match=r"labels .* -> .*crops .* -> "):
        prepare(data, ws, "gender", opts)
    with pytest.raises(DataError, match=r"crop manifest changed since this trial's study started \(crops "):
        load_head_data(plan.base, ws, pins=pins.as_dict())           # a trial Tune retries stops too
    train.to_csv(csv, index=False)
    manifest.to_parquet(ws.manifest, index=False)
    with pytest.raises(DataError, match=r"settings .* -> .*--study s-2"):
        prepare(data, ws, "gender", TuneOptions(smoke_test=True, study="s", resume=True, trial=dict(img_size=48)))
    np.testing.assert_array_equal(load_head_data(plan.base, ws, pins=pins.as_dict()).fold, split)


# -- reproduce: a trial of a smoke study trained again from what MLflow recorded ----------
def test_reproduce_a_smoke_trial_bit_for_bit(own_ws, capsys):
    from mlflow import MlflowClient

    from orchestrator.cli import main
    from orchestrator.stages.tune import TuneOptions, tune_head
    data, ws = own_ws
    table = tune_head(data, ws, "gender", TuneOptions(smoke_test=True, study="r", phase="cv", fold="0",
                                                     num_samples=0, trial=dict(epochs=2), num_cpus=2, verbose=0))
    run_id = table["run_id"].iloc[0]
    tags = MlflowClient(ws.tracking_uri()).get_run(run_id).data.tags
    assert {"input.labels", "input.folds", "input.crops", "input.settings", "input.code"} <= set(tags)
    args = ["reproduce", run_id, "--data", str(data), "--workspace", str(ws.root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"run {run_id} reproduced bit for bit" in out and "| val_f1 " in out and "| train_loss " in out
    # the data at hand no longer what the run was made from: named, nothing trains
    manifest = pd.read_parquet(ws.manifest)
    manifest.loc[manifest["split"] == "train", "crop"] = manifest["crop"].str.replace(".jpg", ".x.jpg")
    manifest.to_parquet(ws.manifest, index=False)
    assert main(args) == 2
    assert "crops: the run used" in capsys.readouterr().err


@pytest.mark.parametrize("field, other", [("age_head", "ordinal"), ("freeze", 3)])
def test_a_setting_added_later_is_pinned_only_where_it_is_not_what_every_older_study_trained(field, other):
    """A study recorded before the field existed resumes (its settings hash is unchanged);
    switching a study to another value (the ordinal age head, frozen layers) is a changed setting."""
    from core.folds import FoldSpec
    from orchestrator.study.pins import study_pins
    table = pd.DataFrame({"path": ["a/1.jpg", "b/1.jpg"], "person": ["a", "b"], "label": [0, 1]})
    rows = pd.DataFrame({"path": ["x.jpg"], "crop": ["c.jpg"]})
    base = TrialConfig(head="all").to_dict() | {"num_samples": 1}
    older = {k: v for k, v in base.items() if k != field}

    def settings(d):
        return study_pins("L", table, rows, FoldSpec(2), d).settings
    assert settings(base) == settings(older)
    assert settings(base | {field: other}) != settings(older)
