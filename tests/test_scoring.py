import pandas as pd
import pytest

from core.errors import DataError
from results.scoring import read_classes, score_submission


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


def test_read_classes_gives_imageid_to_int_class(tmp_path):
    """the returned Series: ImageID index, integer classes, the name 'ans'; padding is read."""
    path = tmp_path / "s.csv"
    path.write_text("ImageID,ans\na.jpg,0\nb.jpg, 17 \n")
    got = read_classes(path, "a submission")
    assert got.to_dict() == {"a.jpg": 0, "b.jpg": 17} and got.name == "ans" and got.dtype.kind == "i"
    assert list(got.index) == ["a.jpg", "b.jpg"] and got.index.name == "ImageID"


def test_read_classes_names_every_bad_line_and_its_fix(tmp_path):
    """a repeated ImageID names the line it first appeared on; a class outside 0-17 (18, -1, 1.0,
    text, empty) is refused line by line; the good lines raise nothing."""
    path = tmp_path / "s.csv"
    path.write_text("ImageID,ans\na.jpg,17\nb.jpg,18\na.jpg,1\nc.jpg,-1\na.jpg,2\nd.jpg,1.0\ne.jpg,x\nf.jpg,\n")
    with pytest.raises(DataError) as err:
        read_classes(path, "a submission")
    assert err.value.problems == [
        f"{path} line 3: ans '18' is not a class 0-17; write the class number",
        f"{path} line 4: ImageID 'a.jpg' also on line 2; list every image once",
        f"{path} line 5: ans '-1' is not a class 0-17; write the class number",
        f"{path} line 6: ImageID 'a.jpg' also on line 2; list every image once",
        f"{path} line 7: ans '1.0' is not a class 0-17; write the class number",
        f"{path} line 8: ans 'x' is not a class 0-17; write the class number",
        f"{path} line 9: ans '' is not a class 0-17; write the class number",
    ]


def test_read_classes_names_what_the_file_should_hold(tmp_path):
    """a missing file's message says what it is for (the ``what`` argument) and its layout."""
    with pytest.raises(DataError, match=r"s\.csv: file not found; an answers file is ImageID,ans with one "
                                        r"class \(0-17\) per image"):
        read_classes(tmp_path / "s.csv", "an answers file")


def test_a_missing_prediction_counts_and_names_the_first(tmp_path):
    """the count of missing images and the first of them in the answers' order; extra
    predictions (images not in the answers) are not scored."""
    truth = _write(tmp_path / "answers.csv", ["a.jpg", "b.jpg", "c.jpg"], [0, 1, 2])
    sub = _write(tmp_path / "s.csv", ["c.jpg"], [2])
    with pytest.raises(DataError) as err:
        score_submission(sub, truth)
    assert err.value.problems == [f"{sub}: 2 image(s) of {truth} have no prediction (first: a.jpg); "
                                  "write a full submission"]
    extra = _write(tmp_path / "s2.csv", ["z.jpg", "c.jpg", "b.jpg", "a.jpg"], [5, 2, 1, 0])
    assert score_submission(extra, truth)["accuracy"] == 1.0


def test_a_missing_file_of_the_two_is_named_for_what_it_is(tmp_path):
    truth = _write(tmp_path / "answers.csv", ["a.jpg"], [0])
    sub = _write(tmp_path / "s.csv", ["a.jpg"], [0])
    with pytest.raises(DataError, match=r"nothing\.csv: file not found; a submission is ImageID,ans"):
        score_submission(tmp_path / "nothing.csv", truth)
    with pytest.raises(DataError, match=r"nothing\.csv: file not found; an answers file is ImageID,ans"):
        score_submission(sub, tmp_path / "nothing.csv")
