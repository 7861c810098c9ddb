import pandas as pd
import pytest

from core.errors import DataError
from results.scoring import score_submission


def _write(path, ids, ans):
    pd.DataFrame({"ImageID": ids, "ans": ans}).to_csv(path, index=False)
    return path


def test_perfect_and_partly_wrong(tmp_path):
    ids = [f"{i}.jpg" for i in range(18)]
    truth = _write(tmp_path / "answers.csv", ids, list(range(18)))
    perfect = score_submission(_write(tmp_path / "s1.csv", ids[::-1], list(range(18))[::-1]), truth)
    assert perfect == {"f1": 1.0, "accuracy": 1.0, "mask_f1": 1.0, "gender_f1": 1.0, "age_f1": 1.0}
    # every image predicted with the wrong age group: mask and gender stay perfect
    wrong_age = [c - c % 3 + (c % 3 + 1) % 3 for c in range(18)]
    s = score_submission(_write(tmp_path / "s2.csv", ids, wrong_age), truth)
    assert s["f1"] == 0.0 and s["accuracy"] == 0.0 and s["age_f1"] == 0.0
    assert s["mask_f1"] == 1.0 and s["gender_f1"] == 1.0


def test_missing_prediction_is_named(tmp_path):
    truth = _write(tmp_path / "answers.csv", ["a.jpg", "b.jpg"], [0, 1])
    with pytest.raises(DataError, match="1 image.*first: b.jpg"):
        score_submission(_write(tmp_path / "s.csv", ["a.jpg"], [0]), truth)
