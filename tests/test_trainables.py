"""trainables/ and search_spaces/ without Ray: losses, presets, config, loop, model files."""
import logging

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from core.dataset import load_train
from core.folds import FoldSpec, ensure_folds
from core.labels import TABLE, TARGETS, encode, num_outputs
from search_spaces import RECIPE, SMOKE, SPACES, recipe_config, recipe_point, search_space
from trainables.augment import MAX_STRENGTH, PRESETS, eval_transform, train_transform
from trainables.config import FULL_DATA, TrialConfig
from trainables.data import build_loaders, load_head_data
from trainables import loop, speed
from trainables.loop import autocast, batch_to, evaluate, to_device, train_one_epoch, uses_bf16
from trainables.losses import LOSSES, build_loss
from trainables.models import build_model, load_model_file, read_model_extra, save_model_file
from trainables.pretrained import PretrainedError
from trainables.predict import predict_probs
from trainables.trainer import TrialState, build_fold_parts, build_parts, fit, run_folds_epoch, validate_folds

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def ws2(crops_ws):
    data, ws = crops_ws
    ensure_folds(load_train(data), ws.root, FoldSpec(2, 777))
    return data, ws


def smoke(head="mask", **kw) -> TrialConfig:
    return recipe_config(head, folds=2, **{**SMOKE, **kw})


# -- losses ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_prefers_the_right_class_and_has_gradients(name, weighted):
    y = torch.tensor([0, 1, 2, 1])
    w = torch.tensor([1.0, 2.0, 0.5]) if weighted else None
    loss = build_loss(name, 3, weight=w, gamma=2.0, smoothing=0.1)
    right = torch.nn.functional.one_hot(y, 3).float() * 6 - 3
    wrong = right.roll(1, dims=1)
    logits = wrong.clone().requires_grad_(True)
    bad = loss(logits, y)
    bad.backward()
    assert torch.isfinite(bad) and logits.grad.abs().sum() > 0
    assert loss(right, y) < bad


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="valid losses: ce, f1, focal, label_smoothing"):
        build_loss("hinge", 3)


# -- augmentation ------------------------------------------------------------------------
@pytest.mark.parametrize("head", TARGETS)
def test_strength_zero_is_the_eval_transform(head):
    img = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    a = train_transform(head, 0.0, 32, MEAN, STD)(image=img)["image"]
    b = eval_transform(32, MEAN, STD)(image=img)["image"]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)


@pytest.mark.parametrize("head", TARGETS)
def test_max_strength_changes_images(head):
    img = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    t, e = train_transform(head, MAX_STRENGTH, 32, MEAN, STD), eval_transform(32, MEAN, STD)
    outs = [t(image=img)["image"] for _ in range(5)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(o, e(image=img)["image"]) for o in outs)


@pytest.mark.parametrize("head", TARGETS)
def test_every_row_of_the_head_table_names_a_preset_and_a_space_that_exist(head):
    row = TABLE[head]
    assert row.augment in PRESETS and row.space in SPACES
    assert recipe_config(head).lr == row.recipe.lr   # the recipe comes from the row


def test_every_preset_and_space_is_some_row_s():
    assert {r.augment for r in TABLE.values()} == set(PRESETS)
    assert {r.space for r in TABLE.values()} == set(SPACES)


def test_strength_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="strength"):
        train_transform("age", 3.0, 32, MEAN, STD)


# -- config ------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,match", [
    ("loss", "hinge", "unknown loss 'hinge'; valid losses: ce, f1, focal"),
    ("model", "no_such_net", "unknown timm model 'no_such_net'"),
    ("head", "hair", "unknown head 'hair'; valid heads: mask, gender, age"),
    ("optimizer", "sgd", "valid optimizers: adam, adamw"),
    ("fold", 7, "fold 7 is outside 0..4"),
    ("precision", "fp8", "unknown precision 'fp8'; valid precisions: auto, bf16, fp16, fp32"),
])
def test_config_validation_names_valid_choices(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrialConfig.from_dict(recipe_config("age").to_dict() | {field: value})


def test_config_round_trip_and_recipe_table():
    cfg = recipe_config("age")
    assert TrialConfig.from_dict(cfg.to_dict() | {"run": {}, "epochs": 4.0}) == cfg
    assert (cfg.lr, cfg.loss, cfg.epochs, cfg.old_from, cfg.model, cfg.img_size) == \
        (1e-4, "focal", 4, 59, "efficientnet_b3", 224)
    assert set(RECIPE) == {"mask", "gender", "age", "all"}
    assert recipe_config("mask").lr == 3e-4 and recipe_config("gender").loss == "ce"


@pytest.mark.parametrize("head", sorted(RECIPE))
def test_recipe_is_the_first_trial_of_the_search_space(head):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=777))
    study.enqueue_trial(recipe_point(head))
    trial = study.ask()
    search_space(head)(trial)
    assert trial.params == recipe_point(head)
    assert ("old_from" in trial.params) == (head in ("age", "all"))   # every model with an age head


# -- data, loop, model files ---------------------------------------------------------------
def test_age_head_trains_on_moved_boundary_and_scores_on_60(ws2):
    data = load_head_data(smoke("age", old_from=57), ws2[1])
    ages = pd.read_parquet(ws2[1].manifest).query("split == 'train'")["age"].to_numpy()
    assert (data.target == 2).sum() == (ages >= 57).sum() and (data.score == 2).sum() == (ages >= 60).sum()


def test_manifest_rows_with_errors_are_skipped(ws2, tmp_path, caplog):
    from core.workspace import Workspace
    import shutil
    ws = Workspace(tmp_path / "ws").make()
    shutil.copytree(ws2[1].root / "folds", ws.root / "folds")
    (ws.root / "crops").rmdir()
    (ws.root / "crops").symlink_to(ws2[1].crops)
    man = pd.read_parquet(ws2[1].manifest)
    bad = man.index[man["split"] == "train"][0]
    man.loc[bad, ["error", "crop"]] = ["unreadable JPEG", ""]
    ws_manifest = tmp_path / "manifest.parquet"
    man.to_parquet(ws_manifest)
    import trainables.data as td
    with caplog.at_level(logging.WARNING):
        rows = td.usable_train_rows(type("W", (), {"manifest": ws_manifest, "crops": ws.crops})())
    assert len(rows) == (man["split"] == "train").sum() - 1
    assert man.loc[bad, "path"] in caplog.text and "unreadable JPEG" in caplog.text


def test_loaders_split_by_fold_and_full_data(ws2):
    data = load_head_data(smoke(), ws2[1])
    train, val = build_loaders(smoke(fold=1), data, MEAN, STD)
    assert len(train.dataset) + len(val.dataset) == len(data.fold)
    assert set(data.fold[val.dataset.index]) == {1}
    train_all, none = build_loaders(smoke(fold=FULL_DATA), data, MEAN, STD)
    assert none is None and len(train_all.dataset) == len(data.fold)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_train_one_epoch_learns_and_evaluate_reports(ws2, precision):
    cfg = smoke("mask", lr=3e-3, batch_size=16)
    parts = build_parts(cfg, ws2[1])
    before = evaluate(parts.model, parts.val_loader, parts.loss_fn, parts.device, "mask", precision=precision)
    losses = [train_one_epoch(parts.model, parts.train_loader, parts.loss_fn, parts.optimizer, None,
                              parts.device, precision=precision) for _ in range(3)]
    after = evaluate(parts.model, parts.val_loader, parts.loss_fn, parts.device, "mask", precision=precision)
    assert losses[-1] < losses[0]
    assert after.probs.shape == (len(parts.val_paths), 3)
    assert np.allclose(after.probs.sum(1), 1, atol=1e-5)
    assert 0 <= after.f1 <= 1 and after.acc > before.acc


def test_precision_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    assert uses_bf16(cpu, "bf16") and not uses_bf16(cpu, "fp32")
    for native in (True, False):   # auto: bf16 only where the CPU computes it natively
        monkeypatch.setattr(loop, "cpu_has_bf16", lambda: native)
        assert uses_bf16(cpu, "auto") is native
        with autocast(cpu, "auto"):
            assert torch.is_autocast_enabled("cpu") is native


def test_trials_run_channels_last_with_the_same_predictions(ws2):
    parts = build_parts(smoke("mask"), ws2[1])
    convs = [m.weight for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.randn(4, 3, 32, 32)
    assert batch_to(x, torch.device("cpu")).is_contiguous(memory_format=torch.channels_last)
    nchw = build_model(parts.cfg, pretrained="").eval()   # same weights, the default layout
    nchw.load_state_dict(parts.model.state_dict())
    with torch.no_grad():
        a = nchw(x)
        b = to_device(parts.model, torch.device("cpu")).eval()(batch_to(x, torch.device("cpu")))
    assert torch.allclose(a, b, atol=1e-4)


def test_speed_probe_augments_every_batch_in_the_trials_precision(monkeypatch):
    calls = {"augment": 0, "precision": set()}

    def counting_transform(*args, **kw):
        real = train_transform(*args, **kw)

        def augment(**x):
            calls["augment"] += 1
            return real(**x)
        return augment

    def recording_autocast(device, precision):
        calls["precision"].add(precision)
        return autocast(device, precision)
    import trainables.loop as loop
    monkeypatch.setattr(speed, "train_transform", counting_transform)
    monkeypatch.setattr(loop, "autocast", recording_autocast)   # the trial's own epoch code
    cfg = smoke("mask", precision="fp32")
    assert speed.train_images_per_s(cfg, batches=2, warmup=1, threads=1) > 0
    assert calls == {"augment": 3 * cfg.batch_size, "precision": {"fp32"}}


def test_model_file_round_trip_and_predict_probs(ws2, tmp_path):
    cfg, ws = smoke("gender"), ws2[1]
    parts, state, history = fit(cfg, ws)
    assert state.epoch == 1 and set(history[0]) == {"train_loss", "val_f1", "val_loss", "val_acc"}
    path = save_model_file(tmp_path / "m.pt", parts.model, cfg, best_epoch=1, val_f1=0.5)
    model, cfg2 = load_model_file(path)
    assert cfg2 == cfg and read_model_extra(path) == {"best_epoch": 1, "val_f1": 0.5}
    crops = [ws.crops / c for c in pd.read_parquet(ws.manifest)["crop"][:5]]
    p1 = predict_probs(model, cfg2, crops)
    p0 = predict_probs(parts.model.cpu(), cfg, crops, tta=())
    assert p1.shape == (5, 2) and np.allclose(p1.sum(1), 1, atol=1e-5)
    assert not np.allclose(p0, p1)   # hflip TTA changes the average


def test_joint_model_learns_every_head_and_scores_the_18_classes(ws2, tmp_path):
    """head=all: [N, 3] labels, one loss per head summed, per-head softmax, 18-class val F1."""
    cfg, ws = smoke("all", lr=3e-3, batch_size=16, epochs=3, old_from=57), ws2[1]
    data = load_head_data(cfg, ws)
    ages = pd.read_parquet(ws.manifest).query("split == 'train'")["age"].to_numpy()
    assert data.target.shape == (len(ages), 3)
    assert (data.target[:, 2] == 2).sum() == (ages >= 57).sum() and (data.score[:, 2] == 2).sum() == (ages >= 60).sum()
    parts, state, history = fit(cfg, ws)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    val = evaluate(parts.model, parts.val_loader, parts.loss_fn, parts.device, "all")
    assert val.probs.shape == (len(parts.val_paths), 8)
    for cols in (slice(0, 3), slice(3, 5), slice(5, 8)):   # a distribution per head
        assert np.allclose(val.probs[:, cols].sum(1), 1, atol=1e-5)
    truth = encode(*data.score[parts.val_loader.dataset.index].T)
    pred = encode(val.probs[:, :3].argmax(1), val.probs[:, 3:5].argmax(1), val.probs[:, 5:].argmax(1))
    assert val.acc == pytest.approx(np.mean(pred == truth))
    model, cfg2 = load_model_file(save_model_file(tmp_path / "m.pt", parts.model, cfg))
    p = predict_probs(model, cfg2, [ws.crops / c for c in pd.read_parquet(ws.manifest)["crop"][:4]])
    assert p.shape == (4, 8) and np.allclose(p[:, 3:5].sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("target", ["age", "all"])
def test_val_f1_is_the_competitions_macro_f1_on_a_fold_that_lacks_a_class(target):
    """Tune's val_f1 (ASHA, best_epoch) = sklearn's average='macro', as the ensemble scores:
    a class absent from the fold (here: age >=60, and its 18-class codes) does not count as 0."""
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    n = 60
    truth = np.stack([rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n)], 1)   # no age 2
    probs = rng.random((n, 8))
    probs[:, 7] = 0.0    # nor predicted (sklearn's macro counts a class in either)
    if target == "age":
        truth, probs = truth[:, 2], probs[:, 5:]
        y, pred = truth, probs.argmax(1)
    else:
        y = encode(*truth.T)
        pred = encode(probs[:, :3].argmax(1), probs[:, 3:5].argmax(1), probs[:, 5:].argmax(1))
    f1, acc = loop.score(target, probs, truth)
    assert f1 == pytest.approx(f1_score(y, pred, average="macro"))
    assert f1 > f1_score(y, pred, average="macro", labels=list(range(18 if target == "all" else 3)),
                         zero_division=0)
    assert acc == pytest.approx(np.mean(pred == y))


def test_unvalidated_epochs_train_only_and_a_last_epoch_is_validated_after_all(ws2):
    """val_from: earlier epochs report no validation; validate_folds scores one afterwards."""
    parts = build_fold_parts(smoke("mask", epochs=2, val_from=2), ws2[1])
    res = run_folds_epoch(parts, TrialState(), validate=False)
    assert set(res.metrics) == {"train_loss"} and res.val is None and not res.improved
    assert res.state.epoch == 1 and res.state.best_epoch == 0
    done = validate_folds(parts, res)
    assert done.val is not None and done.improved and done.state.best_epoch == 1
    assert {"val_f1", "val_loss", "val_acc"} <= set(done.metrics)


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    """(an ImageNet-shaped weights file of the smoke model, one of another architecture), as a
    machine with internet would save them: torch.save(timm.create_model(...).state_dict())."""
    import timm
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    donor = timm.create_model(SMOKE["model"])   # 1000 classes, like timm's own weights
    torch.save(donor.state_dict(), d / "smoke.pth")
    torch.save(timm.create_model("resnet10t").state_dict(), d / "resnet10t.pth")
    return donor.state_dict(), d / "smoke.pth", d / "resnet10t.pth"


@pytest.mark.parametrize("head", TARGETS)
def test_local_pretrained_weights_file_loads_into_every_heads_model(weights_files, head):
    donor, good, _ = weights_files
    model = build_model(smoke(head, pretrained=str(good)))
    ours = model.state_dict()
    backbone = [k for k in ours if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(ours[k], donor[k]) for k in backbone)
    assert ours["classifier.weight"].shape[0] == num_outputs(head)   # the head's classes, not 1000


def test_a_weights_file_of_another_architecture_is_a_clear_error(weights_files, tmp_path):
    _, _, other = weights_files
    with pytest.raises(PretrainedError, match=r"tensor 6 'conv1.3.weight' has shape \(32, 24, 3, 3\).*not hold weights "
                                              r"of timm model 'test_efficientnet'.*another architecture.*--pretrained none"):
        build_model(smoke(pretrained=str(other)))
    with pytest.raises(PretrainedError, match="no such weights file"):
        build_model(smoke(), pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not weights")
    with pytest.raises(PretrainedError, match="not a weights file"):
        build_model(smoke(), pretrained=str(tmp_path / "junk.pth"))


def test_the_recipe_starts_from_pretrained_weights_and_smoke_runs_from_scratch():
    assert all(recipe_config(h).pretrained == "hub" for h in RECIPE)
    assert recipe_config("age", **SMOKE).pretrained == "none" and TrialConfig("age").pretrained == "none"
    # "" (model files saved before "none") still means from scratch
    assert build_model(smoke(pretrained="")).state_dict().keys() == build_model(smoke()).state_dict().keys()


def test_search_folds_average_fold_models_and_cover_every_fold(ws2):
    from trainables.trainer import TrialState, build_fold_parts, oof_of, run_folds_epoch
    cfg = smoke("gender", fold=1, search_folds=2)
    parts = build_fold_parts(cfg, ws2[1])
    assert [p.cfg.fold for p in parts] == [1, 0] and all(p.cfg.search_folds == 1 for p in parts)
    res = run_folds_epoch(parts, TrialState())
    assert len(res.val) == 2 and res.state.best_epoch == 1
    assert res.metrics["val_f1"] == pytest.approx(np.mean([v.f1 for v in res.val]))
    oof = oof_of(parts, res)
    assert len(oof) == len(parts[0].data.paths) and oof["path"].is_unique
    with pytest.raises(ValueError, match="search_folds 3 must lie in 1..2"):
        smoke(search_folds=3)
