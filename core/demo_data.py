"""A small synthetic data set in the competition layout, with learnable cues per head.

Each person is a drawn portrait (face ellipse, eyes, hair) whose visual cues carry the labels:
  mask:   a mask over nose and mouth (wear), a mask slipped to the chin (incorrect), none
  gender: long hair falling past the jaw (female) or short hair (male)
  age:    hair lightness and forehead lines grow with age
Deterministic from ``seed``; no dependency on the real-face set.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .labels import IMAGE_KINDS, SEED, age_group, encode

W, H = 192, 256   # portrait size (3:4 like the competition's 384x512)
MASK_COLOURS = [(120, 170, 215), (235, 235, 230), (35, 35, 40), (225, 160, 180), (60, 80, 140)]


@dataclass(frozen=True)
class DemoSpec:
    train_persons: int = 60   # persons in train/ (7 images each)
    eval_persons: int = 20    # persons in eval/ (7 images each)
    seed: int = SEED


def sample_age(rng: random.Random) -> int:
    # roughly the competition mix: 36% <30, 55% 30-59, 9% >=60
    r = rng.random()
    return rng.randint(18, 29) if r < 0.36 else rng.randint(30, 59) if r < 0.91 else rng.randint(60, 69)


def draw_portrait(rng: random.Random, gender: int, age: int, kind: str) -> Image.Image:
    bg = tuple(rng.randint(90, 230) for _ in range(3))
    img = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(img)
    cx, cy = W / 2 + rng.uniform(-10, 10), H * 0.45 + rng.uniform(-10, 10)
    fw, fh = rng.uniform(40, 48), rng.uniform(54, 62)
    grey = min(1.0, max(0.0, (age - 18) / 50 + rng.uniform(-0.08, 0.08)))
    hair = tuple(int(40 + 190 * grey + rng.uniform(-10, 10)) for _ in range(3))
    if gender == 1:  # long hair behind the face, down past the jaw
        d.rectangle([cx - fw - 14, cy - fh - 8, cx + fw + 14, cy + fh + 40], fill=hair)
    skin = tuple(int(c) for c in np.array([205, 160, 130]) * rng.uniform(0.7, 1.1))
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    d.chord([cx - fw, cy - fh - 6, cx + fw, cy - fh * 0.2], 180, 360, fill=hair)
    for k in range(int(4 * grey)):  # forehead lines
        y = cy - fh * 0.45 + 5 * k
        d.line([cx - fw * 0.45, y, cx + fw * 0.45, y], fill=(110, 80, 60), width=1)
    for side in (-1, 1):
        d.ellipse([cx + side * fw * 0.42 - 5, cy - 9, cx + side * fw * 0.42 + 5, cy - 3], fill=(30, 30, 30))
    d.line([cx, cy, cx - 3, cy + 14], fill=(120, 80, 60), width=2)          # nose
    d.line([cx - 12, cy + 28, cx + 12, cy + 28], fill=(150, 50, 60), width=3)  # mouth
    mask = IMAGE_KINDS[kind]
    if mask != 2:
        colour = MASK_COLOURS[int(kind[-1]) - 1] if mask == 0 else rng.choice(MASK_COLOURS)
        top = cy - 2 if mask == 0 else cy + 22   # incorrect: nose out, mask on mouth/chin
        d.rounded_rectangle([cx - fw * 0.85, top, cx + fw * 0.85, top + fh * 0.8], 10, fill=colour)
    arr = np.asarray(img, dtype=np.float32)
    arr += np.random.default_rng(rng.randrange(2**31)).normal(0, 5, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _persons(rng: random.Random, n: int, first_id: int) -> list[dict]:
    out = []
    for i in range(n):
        gender, age = rng.randint(0, 1), sample_age(rng)
        pid = f"{first_id + i:06d}"
        out.append({"id": pid, "gender": ("male", "female")[gender], "race": "Asian", "age": age,
                    "path": f"{pid}_{('male', 'female')[gender]}_Asian_{age}", "g": gender,
                    "seed": rng.randrange(2**31)})
    return out


def write_demo_data(out: Path | str, spec: DemoSpec = DemoSpec()) -> Path:
    """Write train/ and eval/ (plus eval/answers.csv with the true classes and eval/ages.csv with
    the true ages, for benchmarks) under ``out``."""
    import pandas as pd   # heavy: the CLI reads DemoSpec for its --help
    out = Path(out)
    rng = random.Random(spec.seed)
    train = _persons(rng, spec.train_persons, 1)
    for p in train:
        prng = random.Random(p["seed"])
        folder = out / "train" / "images" / p["path"]
        folder.mkdir(parents=True, exist_ok=True)
        for kind in IMAGE_KINDS:
            draw_portrait(prng, p["g"], p["age"], kind).save(folder / f"{kind}.jpg", quality=92)
    cols = ["id", "gender", "race", "age", "path"]
    (out / "train").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train)[cols].to_csv(out / "train" / "train.csv", index=False)
    _write_eval(out, _persons(rng, spec.eval_persons, 900001), rng)
    return out


def _write_eval(out: Path, persons: list[dict], rng: random.Random) -> None:
    import pandas as pd   # heavy, as in write_demo_data
    (out / "eval" / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in persons:
        prng = random.Random(p["seed"])
        for kind, mask in IMAGE_KINDS.items():
            image_id = hashlib.sha1(f"{p['id']}/{kind}".encode()).hexdigest() + ".jpg"
            draw_portrait(prng, p["g"], p["age"], kind).save(out / "eval" / "images" / image_id, quality=92)
            rows.append({"ImageID": image_id, "ans": int(encode(mask, p["g"], age_group(p["age"]))),
                         "age": p["age"], "person": p["id"]})
    rng.shuffle(rows)
    truth = pd.DataFrame(rows)
    truth[["ImageID", "ans"]].to_csv(out / "eval" / "answers.csv", index=False)
    truth[["ImageID", "age", "person"]].to_csv(out / "eval" / "ages.csv", index=False)
    truth[["ImageID"]].assign(ans=0).to_csv(out / "eval" / "info.csv", index=False)
