import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from core.errors import DataError
from core.labels import NUM_CLASSES, decode
from results.report import HONEST_NOTE, ReportInputs, write_report
from results.submission import write_submission


def test_submission_in_info_order(tmp_path):
    order = ["c.jpg", "a.jpg", "b.jpg"]
    pred = pd.DataFrame({"image_id": ["a.jpg", "b.jpg", "c.jpg"], "ans": [1, 17, 0]})
    out = tmp_path / "sub" / "submission.csv"
    write_submission(order, pred, out)
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["ImageID", "ans"]
    assert sub["ImageID"].tolist() == order and sub["ans"].tolist() == [0, 1, 17]
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]   # no temp file left


@pytest.mark.parametrize("pred,match", [
    (pd.DataFrame({"image_id": ["a.jpg", "b.jpg"], "ans": [1, 2]}), "no prediction, e.g. c.jpg"),
    (pd.DataFrame({"image_id": ["a.jpg", "b.jpg", "c.jpg", "z.jpg"], "ans": [1, 2, 3, 4]}), "not in info.csv, e.g. z.jpg"),
    (pd.DataFrame({"image_id": ["a.jpg", "a.jpg", "b.jpg", "c.jpg"], "ans": [1, 1, 2, 3]}), "more than once: a.jpg"),
    (pd.DataFrame({"image_id": ["a.jpg", "b.jpg", "c.jpg"], "ans": [1, 18, -1]}), "outside 0..17 for ImageID\\(s\\) b.jpg, c.jpg"),
])
def test_submission_rejects_bad_predictions(tmp_path, pred, match):
    out = tmp_path / "submission.csv"
    out.write_text("old,kept\n")
    with pytest.raises(DataError, match=match):
        write_submission(["a.jpg", "b.jpg", "c.jpg"], pred, out)
    assert out.read_text() == "old,kept\n"     # a bad submission never replaces a good one


def test_report_files_and_numbers(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, NUM_CLASSES, 300)
    before = np.where(rng.random(300) < 0.7, y, rng.integers(0, NUM_CLASSES, 300))
    after = np.where(rng.random(300) < 0.8, y, before)
    heads_true = dict(zip(("mask", "gender", "age"), decode(y)))
    heads_pred = dict(zip(("mask", "gender", "age"), decode(after)))
    r = ReportInputs(y, before, after, heads_true, heads_pred, train_labels=y, eval_pred=after[:40],
                     offsets=np.linspace(-1, 1, NUM_CLASSES),
                     models=pd.DataFrame({"head": ["age"], "run_id": ["abc"]}), settings={"vote": "soft"})
    metrics, files = write_report(r, tmp_path / "ens")
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    names = {f.name for f in files}
    assert {"report.md", "confusion.png", "class_counts.png", "per_class.csv", "class_counts.csv",
            "confusion.csv", "summary.csv", "models.csv"} <= names
    assert metrics["oof_f1_after"] > metrics["oof_f1_before"]
    assert metrics["oof_f1_mask"] == pytest.approx(
        f1_score(heads_true["mask"], heads_pred["mask"], average="macro"))
    counts = pd.read_csv(tmp_path / "ens" / "class_counts.csv")
    assert counts["train"].sum() == 300 and counts["eval_pred"].sum() == 40
    conf = pd.read_csv(tmp_path / "ens" / "confusion.csv")
    assert conf.iloc[:, 1:].to_numpy().sum() == 300
    md = (tmp_path / "ens" / "report.md").read_text()
    assert HONEST_NOTE in md and "| vote | soft |" in md and "not_wear/female/>=60" in md
