"""Read a data directory in the competition layout into pandas tables.

train/train.csv (id,gender,race,age,path) + train/images/<path>/<kind>.<ext>
eval/info.csv (ImageID,ans) + eval/images/<ImageID>
Every problem is collected and raised as one DataError naming file, line and fix;
usable-but-odd data (a missing image kind, a stray file) is a warning, never a silent drop.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .corrections import apply_corrections
from .csv_input import WHOLE, parse_age, read_csv
from .errors import DataError
from .labels import COMPETITION_OLD_AGE, GENDERS, IMAGE_EXTS, IMAGE_KINDS, age_group, encode

log = logging.getLogger(__name__)
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")


def inside(path: Path, root: Path) -> bool:
    """``path`` (symlinks followed) lies in ``root`` (resolved): '..', an absolute path or a link
    leading out of the data set would otherwise read another folder without a word."""
    return path.resolve().is_relative_to(root.resolve())


def _check_person_row(line: int, row, csv_path: Path, seen: dict, problems: list, warnings: list) -> None:
    where = f"{csv_path} line {line}"
    pid = row["id"].strip()
    if not pid:
        problems.append(f"{where}: empty id; give every person an id")
    elif pid in seen:
        problems.append(f"{where}: duplicate id {pid!r} (also on line {seen[pid]}); "
                        "give every person a unique id")
    seen.setdefault(pid, line)
    if row["gender"].strip().lower() not in GENDERS:
        problems.append(f"{where}: unknown gender {row['gender']!r}; use one of {', '.join(GENDERS)}")
    age, why = parse_age(row["age"])
    if age is None:
        problems.append(f"{where}: {why}")
    elif not WHOLE.fullmatch(row["age"].strip()):
        warnings.append(f"{where}: age {row['age']!r} read as {age}")


def _person_folder(data_dir: Path, line: int, path: str, csv_path: Path, problems: list,
                   owners: dict[Path, int]) -> Path | None:
    """The person's image folder, or None (a problem noted) when it is missing, not in
    train/images, or another row's (``owners``: resolved folder -> its line)."""
    root = data_dir / "train" / "images"
    folder = root / path
    where = f"{csv_path} line {line}"
    if path and not inside(folder, root):
        problems.append(f"{where}: path {path!r} leads outside {root} (to {folder.resolve()}); "
                        "put the person's folder inside train/images and give its name")
    elif not path or not folder.is_dir():
        problems.append(f"{where}: image folder {folder} does not exist; fix the path column or add the folder")
    elif folder.resolve() in owners:   # one folder, two persons: the same photos under two labels, in two folds
        problems.append(f"{where}: path {path!r} is the folder of line {owners[folder.resolve()]} too; "
                        "give every person their own folder")
    else:
        owners[folder.resolve()] = line
        return folder
    return None


def _person_images(folder: Path, where: str, problems: list, warnings: list) -> dict[str, Path]:
    """kind -> image file of one person's folder."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.is_dir():
            continue  # hidden files (._mask1.jpg from macOS) are not images of the person
        kind, ext = f.stem, f.suffix.lower()
        if not inside(f, folder):
            problems.append(f"{where}: {f} is a link to {f.resolve()}, outside the person's folder; "
                            "copy the image into the folder instead")
        elif kind not in IMAGE_KINDS or ext not in IMAGE_EXTS:
            warnings.append(f"{where}: ignoring unexpected file {f} (expected "
                            f"{'/'.join(IMAGE_KINDS)} with {'/'.join(IMAGE_EXTS)})")
        elif kind in found:
            problems.append(f"{where}: two files for {kind!r} ({found[kind].name}, {f.name}); "
                            "keep one of them")
        else:
            found[kind] = f
    missing = [k for k in IMAGE_KINDS if k not in found]
    if len(missing) == len(IMAGE_KINDS):
        problems.append(f"{where}: folder {folder} holds none of the 7 images; add them "
                        "or remove the row")
    elif missing:
        warnings.append(f"{where}: {folder} lacks {', '.join(missing)}; using the "
                        f"{len(found)} images present")
    return found


def load_train(data_dir: Path | str, *, old_from: int = COMPETITION_OLD_AGE,
               corrections: Path | str | None = None) -> pd.DataFrame:
    """One row per training image with person, path, kind and labels.

    ``age_group`` uses the *training* boundary ``old_from``; ``label`` (the 18-class
    target) always uses the competition boundary of 60.
    """
    data_dir = Path(data_dir)
    csv_path = data_dir / "train" / "train.csv"
    people = read_csv(csv_path, TRAIN_COLUMNS, "see README 'Data layout'")
    problems: list[str] = []
    warnings: list[str] = []
    seen: dict[str, int] = {}
    owners: dict[Path, int] = {}
    rows = []
    if people.empty:
        problems.append(f"{csv_path}: no persons listed; add one row per person under the header")
    for i, row in people.iterrows():
        line = i  # read_csv: the index is the file line
        _check_person_row(line, row, csv_path, seen, problems, warnings)
        folder = _person_folder(data_dir, line, row["path"], csv_path, problems, owners)
        if folder is None:
            continue
        for kind, f in _person_images(folder, f"{csv_path} line {line}", problems, warnings).items():
            rows.append({"person": row["id"].strip(), "path": f.relative_to(data_dir).as_posix(),
                         "kind": kind, "gender": GENDERS.get(row["gender"].strip().lower(), -1),
                         "age": parse_age(row["age"])[0], "race": row["race"]})
    if problems:
        raise DataError(problems)
    for w in warnings:
        log.warning(w)
    df = pd.DataFrame(rows)
    df["mask"] = df["kind"].map(IMAGE_KINDS).astype(int)
    df = df.astype({"gender": int, "age": int})[["person", "path", "kind", "race", "mask", "gender", "age"]]
    if corrections is not None:
        df = apply_corrections(df, Path(corrections))
    return add_labels(df, old_from)


def add_labels(df: pd.DataFrame, old_from: int = COMPETITION_OLD_AGE) -> pd.DataFrame:
    """(Re)compute age groups and the 18-class label from mask, gender and age."""
    df = df.copy()
    df["age_group"] = age_group(df["age"].to_numpy(), old_from)
    true_age = age_group(df["age"].to_numpy(), COMPETITION_OLD_AGE)
    df["label"] = encode(df["mask"].to_numpy(), df["gender"].to_numpy(), true_age)
    return df


def load_eval(data_dir: Path | str) -> pd.DataFrame:
    """The eval images in info.csv order: image_id, path (relative to data_dir)."""
    data_dir = Path(data_dir)
    csv_path = data_dir / "eval" / "info.csv"
    info = read_csv(csv_path, EVAL_COLUMNS, "see README 'Data layout'")
    problems = []
    dup = info["ImageID"].duplicated(keep="first")
    for i in info.index[dup]:
        problems.append(f"{csv_path} line {i}: ImageID {info.at[i, 'ImageID']!r} listed "
                        "twice; list every eval image once")
    root = data_dir / "eval" / "images"
    for i, image_id in info["ImageID"].items():
        if image_id and not inside(root / image_id, root):
            problems.append(f"{csv_path} line {i}: ImageID {image_id!r} leads outside {root} "
                            f"(to {(root / image_id).resolve()}); put the image inside eval/images and give its name")
        elif not image_id or not (root / image_id).is_file():
            problems.append(f"{csv_path} line {i}: image {root / image_id}"
                            " does not exist; add the file or remove the row")
    if problems:
        raise DataError(problems)
    return pd.DataFrame({"image_id": info["ImageID"].tolist(),   # in order, numbered from 0
                         "path": ["eval/images/" + x for x in info["ImageID"]]})
