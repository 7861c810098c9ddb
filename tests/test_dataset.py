import logging
import shutil

import pandas as pd
import pytest

from core.dataset import load_eval, load_train
from core.errors import DataError


def _edit_train_csv(data, fn):
    path = data / "train" / "train.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def test_table_columns(demo_dir):
    train = load_train(demo_dir)
    for col in ("person", "path", "kind", "mask", "gender", "age", "age_group", "label"):
        assert col in train.columns
    assert train["path"].str.startswith("train/images/").all()
    assert train["label"].between(0, 17).all()


def test_training_age_boundary_does_not_change_scoring_label(demo_dir):
    t60, t59 = load_train(demo_dir), load_train(demo_dir, old_from=59)
    is59 = t60["age"] == 59
    assert (t59.loc[~is59, "age_group"] == t60.loc[~is59, "age_group"]).all()
    assert (t59.loc[is59, "age_group"] == 2).all()
    assert (t59["label"] == t60["label"]).all()


@pytest.mark.parametrize("breakage,match", [
    (lambda df: df.drop(columns=["age"]), r"missing column\(s\) age"),
    (lambda df: df.assign(age=df["age"].where(df.index != 3, "forty")), r"train\.csv line 5: age 'forty' is not a whole number"),
    (lambda df: df.assign(gender=df["gender"].where(df.index != 0, "unknown")), r"line 2: unknown gender 'unknown'; use one of male, female"),
    (lambda df: pd.concat([df, df.iloc[[1]]]), r"duplicate id .* \(also on line 3\)"),
    (lambda df: df.assign(path=df["path"].where(df.index != 2, "nobody_here")), r"line 4: image folder .*nobody_here does not exist"),
])
def test_bad_train_csv(demo_copy, breakage, match):
    _edit_train_csv(demo_copy, breakage)
    with pytest.raises(DataError, match=match):
        load_train(demo_copy)


def test_all_problems_reported_at_once(demo_copy):
    _edit_train_csv(demo_copy, lambda df: df.assign(age="x"))
    with pytest.raises(DataError) as err:
        load_train(demo_copy)
    assert len(err.value.problems) == 30


def test_missing_and_extra_image_kinds_warn_but_load(demo_copy, caplog):
    folder = next((demo_copy / "train" / "images").iterdir())
    (folder / "mask3.jpg").unlink()
    (folder / "mask9.jpg").write_bytes(b"x")
    (folder / "._mask1.jpg").write_bytes(b"x")   # macOS resource fork: ignored silently
    with caplog.at_level(logging.WARNING):
        train = load_train(demo_copy)
    assert len(train) == 30 * 7 - 1
    assert "lacks mask3" in caplog.text and "unexpected file" in caplog.text and "mask9.jpg" in caplog.text


def test_empty_person_folder_and_duplicate_kind_are_errors(demo_copy):
    folders = sorted((demo_copy / "train" / "images").iterdir())
    for f in folders[0].iterdir():
        f.unlink()
    shutil.copy(folders[1] / "normal.jpg", folders[1] / "normal.png")
    with pytest.raises(DataError) as err:
        load_train(demo_copy)
    text = str(err.value)
    assert "holds none of the 7 images" in text and "two files for 'normal'" in text


def test_missing_train_csv(tmp_path):
    with pytest.raises(DataError, match=r"train\.csv: file not found"):
        load_train(tmp_path)


def test_eval_image_listed_but_absent_and_duplicates(demo_copy):
    info = pd.read_csv(demo_copy / "eval" / "info.csv")
    (demo_copy / "eval" / "images" / info["ImageID"][4]).unlink()
    pd.concat([info, info.iloc[[0]]]).to_csv(demo_copy / "eval" / "info.csv", index=False)
    with pytest.raises(DataError) as err:
        load_eval(demo_copy)
    text = str(err.value)
    assert "line 6: image" in text and "does not exist" in text
    assert f"line {len(info) + 2}: ImageID" in text and "listed twice" in text


def test_corrections_applied_and_reported(demo_copy, tmp_path):
    train = load_train(demo_copy)
    pid = train["person"].iloc[0]
    old_gender = int(train.loc[train["person"] == pid, "gender"].iloc[0])
    new_gender = ("female", "male")[old_gender]
    corr = tmp_path / "corrections.csv"
    corr.write_text(f"id,field,value,note\n{pid},gender,{new_gender},looks {new_gender}\n"
                    f"{pid},age,65,\n{pid},swap,incorrect_mask:normal,files swapped\n")
    fixed = load_train(demo_copy, corrections=corr)
    rows = fixed[fixed["person"] == pid].set_index("kind")
    assert (rows["gender"] == 1 - old_gender).all() and (rows["age"] == 65).all()
    assert rows.at["incorrect_mask", "mask"] == 2 and rows.at["normal", "mask"] == 1
    assert (rows["age_group"] == 2).all()
    assert rows.at["normal", "label"] == 1 * 6 + (1 - old_gender) * 3 + 2
    assert len(fixed.attrs["corrections"]) == 3
    untouched = fixed["person"] != pid
    assert fixed.loc[untouched, "label"].equals(train.loc[untouched, "label"])


def test_bad_corrections(demo_copy, tmp_path):
    corr = tmp_path / "c.csv"
    corr.write_text("id,field,value\nnobody,age,40\n000001,hair,red\n000001,age,old\n000001,swap,normal:mask9\n")
    with pytest.raises(DataError) as err:
        load_train(demo_copy, corrections=corr)
    text = str(err.value)
    assert "c.csv line 2: id 'nobody' is not in train.csv" in text
    assert "line 3: field 'hair'" in text and "line 4: age 'old'" in text and "line 5: swap" in text
