"""The utkmask data set in the competition layout, made on every core at once.

``make_utkmask.py`` (beside the faces) draws one person after another: ~16 ms an image, so
2,000 persons take ~4 minutes on one core. This runs its own ``person_images`` for many persons
at once, with the script's seeds, ids and file names, so the files are the script's own, byte
for byte (tests/test_utkmask.py checks it), in a few seconds on 16 cores. What travels to an
offline box is then only the source faces of the chosen persons (~7 KB each), not 14,000 images.

    python benchmarks/gpu/utk_layout.py UTK_DIR OUT --train 1000 --eval-from 2001 --eval-to 3000
    python benchmarks/gpu/utk_layout.py UTK_DIR DEST --carry ...   # copy only what OUT needs (~15 MB)
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_MOD = {}


def script(utk: Path):
    """utkmask's own make_utkmask.py, imported (once per process)."""
    if utk not in _MOD:
        spec = importlib.util.spec_from_file_location("make_utkmask", utk / "make_utkmask.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MOD[utk] = (mod, mod.read_landmarks(utk / "landmarks.csv"))
    return _MOD[utk]


def _train_person(utk: Path, root: Path, i: int, name: str) -> tuple[list, list]:
    mod, marks = script(utk)
    age, gender, lm, box = marks[name]
    pid = f"{i + 1:06d}"
    folder = f"{pid}_{'female' if gender else 'male'}_Asian_{age}"
    (root / "images" / folder).mkdir(exist_ok=True)
    boxes = []
    for kind, img, face_box, _ in mod.person_images(utk / "faces", name, lm, box, seed=i * 7919 + 17):
        img.save(root / "images" / folder / f"{kind}.jpg", quality=90)
        boxes.append([f"{folder}/{kind}.jpg", *face_box])
    return [pid, "female" if gender else "male", "Asian", age, folder], boxes


def _eval_person(utk: Path, root: Path, i: int, name: str) -> tuple[list, list, list]:
    mod, marks = script(utk)
    age, gender, lm, box = marks[name]
    info, answers, boxes = [], [], []
    for kind, img, face_box, mask in mod.person_images(utk / "faces", name, lm, box, seed=i * 104729 + 3):
        image_id = hashlib.sha1(f"{name}/{kind}".encode()).hexdigest() + ".jpg"
        img.save(root / "images" / image_id, quality=90)
        info.append([image_id, 0])
        answers.append([image_id, mod.class_of(mask, gender, age)])
        boxes.append([image_id, *face_box])
    return info, answers, boxes


def _write(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def layout(utk: Path, train: list[str], evals: list[str], out: Path, jobs: int | None = None) -> Path:
    """``out``/train and ``out``/eval as make_utkmask.py writes them (train.csv, info.csv,
    answers.csv, boxes.csv, images)."""
    jobs = jobs or os.cpu_count()
    tr, ev = out / "train", out / "eval"
    for root in (tr, ev):
        (root / "images").mkdir(parents=True, exist_ok=True)
    n = len(train) + len(evals)
    with ProcessPoolExecutor(jobs) as pool:
        tr_res = pool.map(_train_person, [utk] * len(train), [tr] * len(train), range(len(train)), train,
                          chunksize=max(1, n // (8 * jobs)))
        ev_res = pool.map(_eval_person, [utk] * len(evals), [ev] * len(evals), range(len(evals)), evals,
                          chunksize=max(1, n // (8 * jobs)))
        tr_res, ev_res = list(tr_res), list(ev_res)
    _write(tr / "train.csv", ["id", "gender", "race", "age", "path"], [r for r, _ in tr_res])
    _write(tr / "boxes.csv", ["image", "x1", "y1", "x2", "y2"], [b for _, bs in tr_res for b in bs])
    info = [x for i, _, _ in ev_res for x in i]
    answers = [x for _, a, _ in ev_res for x in a]
    order = sorted(range(len(info)), key=lambda j: info[j][0])
    _write(ev / "info.csv", ["ImageID", "ans"], (info[j] for j in order))
    _write(ev / "answers.csv", ["ImageID", "ans"], (answers[j] for j in order))
    _write(ev / "boxes.csv", ["image", "x1", "y1", "x2", "y2"], sorted(b for _, _, bs in ev_res for b in bs))
    return out


def persons(utk: Path, train: int, eval_from: int, eval_to: int) -> tuple[list[str], list[str]]:
    """quality.py's split: the first ``train`` lines of persons.txt, and lines eval_from..eval_to."""
    names = (utk / "persons.txt").read_text().splitlines()
    return names[:train], names[eval_from - 1:eval_to]


def carry(utk: Path, dest: Path, names: list[str]) -> Path:
    """What ``layout`` needs for ``names`` (their faces, the landmarks, the script, the person
    list): the folder that travels to an offline box instead of the images."""
    (dest / "faces").mkdir(parents=True, exist_ok=True)
    for f in ("make_utkmask.py", "landmarks.csv", "persons.txt"):
        shutil.copy2(utk / f, dest / f)
    for n in names:
        shutil.copy2(utk / "faces" / n, dest / "faces" / n)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("utk", type=Path, help="folder with make_utkmask.py, landmarks.csv, persons.txt, faces/")
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--eval-from", type=int, default=2001)
    ap.add_argument("--eval-to", type=int, default=3000)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--carry", action="store_true", help="copy the chosen persons' sources to OUT instead")
    a = ap.parse_args()
    train, evals = persons(a.utk, a.train, a.eval_from, a.eval_to)
    if a.carry:
        carry(a.utk, a.out, train + evals)
    else:
        layout(a.utk, train, evals, a.out, a.jobs)


if __name__ == "__main__":
    main()
