"""Provenance (issue 18): nothing stale is reused, the right studies vote, a study is pinned to
its inputs, the calibration is applied only when checked, and a trial can be reproduced."""
import json

import numpy as np
import pandas as pd
import pytest

from trainables.config import TrialConfig


# -- two-fold median epochs round half up, not to even ----------------------------------
@pytest.mark.parametrize("best, epochs", [([2, 3], 3), ([3, 4], 4), ([1, 2], 2), ([4, 4], 4), ([2, 3, 9], 3)])
def test_median_epoch_rounds_half_up(best, epochs):
    from orchestrator.retrain import full_data_config
    cfg = json.dumps(TrialConfig("mask", epochs=10).to_dict())
    runs = pd.DataFrame({"metrics.best_epoch": [float(e) for e in best], "tags.config_json": cfg})
    got, best_epochs = full_data_config(runs)
    assert (got.epochs, best_epochs) == (epochs, sorted(best))


# -- calibration: applied only when its held-out check ran and passed -------------------
def _oof(persons: int, seed: int = 0):
    from orchestrator.ensemble import Oof
    rng = np.random.default_rng(seed)
    n = persons * 7
    y = rng.integers(0, 18, n)
    logits = rng.normal(0, 1, (n, 18))
    logits[np.arange(n), y] += 1.0
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return Oof(np.array([f"p{i}" for i in range(n)]), logp, y, np.arange(n) // 7, {})


def test_calibration_without_a_heldout_check_is_not_applied():
    from orchestrator.ensemble import EnsembleOptions, calibrate
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
    names = [f"k/img{i}.png" for i in range(3)]
    for n in names:
        _grey(ws.crops / n, 10)
    assert int(crop_cache(ws, names, 8)[1].mean()) == 10
    import os
    import time
    time.sleep(0.01)
    _grey(ws.crops / names[1], 250)
    os.utime(ws.crops / names[1])
    again = crop_cache(ws, names, 8)
    assert int(again[1].mean()) == 250 and int(again[0].mean()) == 10
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
