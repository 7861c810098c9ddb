import numpy as np
import pandas as pd
import pytest

from core.dataset import load_train
from core.folds import FoldSpec, assign_folds, ensure_folds, fold_file


@pytest.fixture(scope="module")
def train(demo_dir):
    return load_train(demo_dir)


def test_person_folds_keep_each_person_on_one_side(train):
    folds = assign_folds(train, FoldSpec(k=5))
    per_person = train.assign(fold=folds).groupby("person")["fold"].nunique()
    assert (per_person == 1).all()
    assert set(folds) == set(range(5))


def test_person_folds_are_balanced(train):
    folds = assign_folds(train, FoldSpec(k=5))
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 7 * 2   # whole persons, within two persons
    # mask state is balanced: every fold has 5:1:1 wear:incorrect:normal
    shares = train.assign(fold=folds).groupby("fold")["mask"].apply(lambda m: (m == 0).mean())
    assert np.allclose(shares, 5 / 7, atol=0.02)


def test_folds_deterministic_and_seeded(train):
    a, b = assign_folds(train, FoldSpec(seed=777)), assign_folds(train, FoldSpec(seed=777))
    assert a.equals(b)
    assert not a.equals(assign_folds(train, FoldSpec(seed=1)))


def test_image_mode_leaks_persons(train):
    folds = assign_folds(train, FoldSpec(mode="image"))
    assert (train.assign(fold=folds).groupby("person")["fold"].nunique() > 1).any()


def test_saved_and_reused(train, tmp_path):
    spec = FoldSpec(k=3)
    first = ensure_folds(train, tmp_path, spec)
    path = fold_file(tmp_path, spec)
    mtime = path.stat().st_mtime_ns
    again = ensure_folds(train, tmp_path, spec)
    assert path.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(first.reset_index(drop=True), again.reset_index(drop=True), check_dtype=False)
    ensure_folds(train.iloc[7:], tmp_path, spec)            # data changed: made anew
    assert len(pd.read_csv(path)) == len(train) - 7


def test_bad_spec():
    with pytest.raises(ValueError, match="person' or 'image"):
        FoldSpec(mode="row")
