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


# --- a data set built per test: a few persons and files, so each message can be pinned whole ---

KINDS7 = [f"{k}.jpg" for k in ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")]


def tiny(root, rows, folders=None):
    """train.csv with ``rows`` (id,gender,race,age,path) and each folder of ``folders``
    (name -> image file names; default: the seven kinds as .jpg for each row's path)."""
    images = root / "train" / "images"
    images.mkdir(parents=True)
    if folders is None:
        folders = {r[4]: KINDS7 for r in rows if r[4]}
    for name, files in folders.items():
        (images / name).mkdir()
        for f in files:
            (images / name / f).write_bytes(b"")
    (root / "train" / "train.csv").write_text("id,gender,race,age,path\n" + "".join(",".join(r) + "\n" for r in rows))
    return root, root / "train" / "train.csv", images


def problems_of(fn, *args, **kw):
    with pytest.raises(DataError) as err:
        fn(*args, **kw)
    return err.value.problems


def test_a_person_row_becomes_one_row_per_image_with_its_labels(tmp_path):
    """ids and genders are read with their padding stripped, genders in any case, the mask
    from the file's kind (any case of extension), columns in a fixed order."""
    data, _, _ = tiny(tmp_path, [(" 007 ", " Female ", "Asian", "61", "p1"), ("8", "male", "", "20", "p2")],
                      {"p1": ["normal.JPG", "incorrect_mask.png", "mask3.jpeg"], "p2": ["mask1.jpg"]})
    train = load_train(data)
    assert list(train.columns) == ["person", "path", "kind", "race", "mask", "gender", "age", "age_group", "label"]
    assert train.drop(columns=["age_group", "label"]).values.tolist() == [
        ["007", "train/images/p1/incorrect_mask.png", "incorrect_mask", "Asian", 1, 1, 61],
        ["007", "train/images/p1/mask3.jpeg", "mask3", "Asian", 0, 1, 61],
        ["007", "train/images/p1/normal.JPG", "normal", "Asian", 2, 1, 61],
        ["8", "train/images/p2/mask1.jpg", "mask1", "", 0, 0, 20]]
    assert train["age_group"].tolist() == [2, 2, 2, 0] and train["label"].tolist() == [11, 5, 17, 0]
    assert {c: str(train[c].dtype) for c in ("mask", "gender", "age")} == {"mask": "int64", "gender": "int64",
                                                                          "age": "int64"}


def test_bad_person_rows_are_named_whole_and_all_at_once(tmp_path):
    data, csv, images = tiny(tmp_path, [("1", "male", "", "20", "p1"), (" ", "male", "", "20", "p2"),
                                        ("1 ", "other", "", "x", "p3"), ("", "male", "", "200", "")],
                             {"p1": KINDS7, "p2": KINDS7, "p3": KINDS7})
    assert problems_of(load_train, data) == [
        f"{csv} line 3: empty id; give every person an id",
        f"{csv} line 4: duplicate id '1' (also on line 2); give every person a unique id",
        f"{csv} line 4: unknown gender 'other'; use one of male, female",
        f"{csv} line 4: age 'x' is not a whole number; write the age in years",
        f"{csv} line 5: empty id; give every person an id",
        f"{csv} line 5: age '200' is over 130; write the age in years",
        f"{csv} line 5: image folder {images} does not exist; fix the path column or add the folder"]


def test_folders_outside_missing_or_shared_are_refused(tmp_path):
    """a path leading out of train/images, a folder that is not there, and a folder another row
    already has (also when spelled differently) are each named with the fix."""
    data, csv, images = tiny(tmp_path, [("1", "male", "", "20", "p1"), ("2", "male", "", "20", "../p1"),
                                        ("3", "male", "", "20", "gone"), ("4", "male", "", "20", "./p1")],
                             {"p1": KINDS7})
    assert problems_of(load_train, data) == [
        f"{csv} line 3: path '../p1' leads outside {images} (to {(images / '../p1').resolve()}); put the "
        "person's folder inside train/images and give its name",
        f"{csv} line 4: image folder {images / 'gone'} does not exist; fix the path column or add the folder",
        f"{csv} line 5: path './p1' is the folder of line 2 too; give every person their own folder"]


def test_a_folders_files_odd_ones_warn_and_bad_ones_are_refused(tmp_path, caplog):
    """hidden files and sub-folders are passed over without a word, other files warn, missing
    kinds warn with the count kept; a kind twice, a link out of the folder or no image at all
    stop the load."""
    data, csv, images = tiny(tmp_path, [("1", "male", "", "20", "p1")],
                             {"p1": ["mask1.jpg", "mask2.jpg", ".mask3.jpg", "notes.txt", "mask4.gif"]})
    (images / "p1" / "normal.jpg").mkdir()
    with caplog.at_level(logging.WARNING, logger="core.dataset"):
        assert load_train(data)["kind"].tolist() == ["mask1", "mask2"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{csv} line 2: ignoring unexpected file {images / 'p1' / 'mask4.gif'} (expected "
        "mask1/mask2/mask3/mask4/mask5/incorrect_mask/normal with .jpg/.jpeg/.png)",
        f"{csv} line 2: ignoring unexpected file {images / 'p1' / 'notes.txt'} (expected "
        "mask1/mask2/mask3/mask4/mask5/incorrect_mask/normal with .jpg/.jpeg/.png)",
        f"{csv} line 2: {images / 'p1'} lacks mask3, mask4, mask5, incorrect_mask, normal; using the 2 images present"]
    (images / "outside.jpg").write_bytes(b"")
    (images / "p1" / "mask5.jpg").symlink_to(images / "outside.jpg")
    (images / "p1" / "mask1.png").write_bytes(b"")
    assert problems_of(load_train, data) == [
        f"{csv} line 2: two files for 'mask1' (mask1.jpg, mask1.png); keep one of them",
        f"{csv} line 2: {images / 'p1' / 'mask5.jpg'} is a link to {images / 'outside.jpg'}, outside the person's "
        "folder; copy the image into the folder instead"]


def test_a_folder_without_images_and_a_file_without_persons_are_refused(tmp_path):
    data, csv, images = tiny(tmp_path, [("1", "male", "", "20", "p1")], {"p1": [".DS_Store"]})
    assert problems_of(load_train, data) == [
        f"{csv} line 2: folder {images / 'p1'} holds none of the 7 images; add them or remove the row"]
    csv.write_text("id,gender,race,age,path\n")
    assert problems_of(load_train, data) == [f"{csv}: no persons listed; add one row per person under the header"]


def test_an_age_a_spreadsheet_wrote_as_a_float_is_read_with_a_warning(tmp_path, caplog):
    data, csv, _ = tiny(tmp_path, [("1", "male", "", "35.0", "p1"), ("2", "male", "", " 36 ", "p2")])
    with caplog.at_level(logging.WARNING, logger="core.dataset"):
        assert load_train(data).groupby("person")["age"].first().to_dict() == {"1": 35, "2": 36}
    assert [r.getMessage() for r in caplog.records] == [f"{csv} line 2: age '35.0' read as 35"]


def test_labels_use_the_training_boundary_for_the_group_and_60_for_the_class():
    from core.dataset import add_labels
    df = pd.DataFrame({"mask": [0, 1, 2], "gender": [1, 0, 1], "age": [29, 30, 58]})
    out = add_labels(df, old_from=58)
    assert out["age_group"].tolist() == [0, 1, 2] and out["label"].tolist() == [3, 7, 16]
    assert "age_group" not in df   # the caller's table is left as it was
    assert add_labels(df)["age_group"].tolist() == [0, 1, 1]


def eval_set(root, ids, files):
    (root / "eval" / "images").mkdir(parents=True)
    for f in files:
        (root / "eval" / "images" / f).write_bytes(b"")
    (root / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{i},0\n" for i in ids))
    return root / "eval" / "info.csv", root / "eval" / "images"


def test_eval_images_keep_the_order_of_info_csv(tmp_path):
    eval_set(tmp_path, ["b.jpg", "a.jpg"], ["a.jpg", "b.jpg"])
    got = load_eval(tmp_path)
    assert got.to_dict("list") == {"image_id": ["b.jpg", "a.jpg"], "path": ["eval/images/b.jpg", "eval/images/a.jpg"]}


def test_bad_eval_rows_are_named_whole(tmp_path):
    csv, root = eval_set(tmp_path, ["a.jpg", "a.jpg", "../x.jpg", "", "gone.jpg"], ["a.jpg"])
    assert problems_of(load_eval, tmp_path) == [
        f"{csv} line 3: ImageID 'a.jpg' listed twice; list every eval image once",
        f"{csv} line 4: ImageID '../x.jpg' leads outside {root} (to {(root / '../x.jpg').resolve()}); put the "
        "image inside eval/images and give its name",
        f"{csv} line 5: image {root} does not exist; add the file or remove the row",
        f"{csv} line 6: image {root / 'gone.jpg'} does not exist; add the file or remove the row"]
