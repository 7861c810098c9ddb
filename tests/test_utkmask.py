"""Loads real faces laid out by ../shared/utkmask's script (skipped when it is absent)."""
import pandas as pd
import pytest

from core.dataset import load_eval, load_train
from core.folds import FoldSpec, assign_folds

pytestmark = pytest.mark.utkmask


def test_load_real_faces(utkmask_dir):
    train = load_train(utkmask_dir)
    assert train["person"].nunique() == 40 and len(train) == 280
    assert train["age"].between(18, 69).all()
    ev = load_eval(utkmask_dir)
    answers = pd.read_csv(utkmask_dir / "eval" / "answers.csv")
    assert len(ev) == 140 and list(ev["image_id"]) == list(answers["ImageID"])
    folds = assign_folds(train, FoldSpec(k=5))
    assert (train.assign(fold=folds).groupby("person")["fold"].nunique() == 1).all()
