"""A contact sheet of audit suspects: one row per person, their photos with label and OOF
prediction under each, the evidence on the left. A person judges a suspect faster by looking.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from core.atomic import write_bytes_atomic
from core.labels import IMAGE_KINDS

THUMB = 112          # photo side in pixels
CAPTION_H = 46       # three caption lines under a photo
TEXT_W = 260         # the evidence column
PAD = 6
INK, RED, GREY = (20, 20, 20), (190, 20, 20), (120, 120, 120)


def _thumb(path: Path | None) -> Image.Image:
    if path is None or not Path(path).is_file():
        im = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        ImageDraw.Draw(im).text((8, THUMB // 2 - 6), "no crop", fill=GREY)
        return im
    with Image.open(path) as im:
        return im.convert("RGB").resize((THUMB, THUMB))


def _row(person: str, evidence: list[str], photos: pd.DataFrame, crop_of, font) -> Image.Image:
    """One person: evidence text, then the photos in the layout's kind order."""
    h = THUMB + CAPTION_H + 2 * PAD
    row = Image.new("RGB", (TEXT_W + len(IMAGE_KINDS) * (THUMB + PAD) + PAD, h), "white")
    d = ImageDraw.Draw(row)
    lines = [f"person {person}"] + [w for e in evidence for w in textwrap.wrap(e, 42)]
    for k, line in enumerate(lines[: h // 12]):
        d.text((PAD, PAD + 12 * k), line, fill=INK if k == 0 else RED, font=font)
    by_kind = {r.kind: r for r in photos.itertuples()}
    for j, kind in enumerate(IMAGE_KINDS):
        x = TEXT_W + j * (THUMB + PAD)
        r = by_kind.get(kind)
        row.paste(_thumb(crop_of(r.path) if r is not None else None), (x, PAD))
        d.text((x, PAD + THUMB + 2), kind, fill=INK, font=font)
        if r is not None:
            d.text((x, PAD + THUMB + 15), f"L {r.label}", fill=INK, font=font)
            d.text((x, PAD + THUMB + 28), f"P {r.pred}", fill=RED if r.pred != r.label else GREY, font=font)
    return row


def _evidence_lines(ev: pd.DataFrame) -> list[str]:
    """The person's evidence: person-level fields first, the single photos on one line."""
    lines = [f"{f} ({s:.2f}): {e}" for f, s, e in zip(ev["field"], ev["score"], ev["evidence"]) if f != "mask"]
    photos = ev[ev["field"] == "mask"]
    if len(photos):
        lines.append("photos: " + "; ".join(photos["evidence"]))
    return lines


def contact_sheet(suspects: pd.DataFrame, predictions: pd.DataFrame, crop_of, out: Path,
                  persons: int = 12) -> Path | None:
    """PNG of the top ``persons`` suspects (in ``suspects`` order). ``predictions``: per image
    person, kind, path, label, pred (results.audit.person_predictions); ``crop_of(path)``: the
    crop file of a training image. None when there is no suspect."""
    order = list(dict.fromkeys(suspects["person"].astype(str)))[:persons]
    if not order:
        return None
    font = ImageFont.load_default()
    preds = predictions.assign(person=predictions["person"].astype(str))
    rows = []
    for person in order:
        evidence = _evidence_lines(suspects.loc[suspects["person"].astype(str) == person])
        rows.append(_row(person, evidence, preds[preds["person"] == person], crop_of, font))
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        ImageDraw.Draw(sheet).line([(0, y), (sheet.width, y)], fill=(210, 210, 210))
        y += r.height
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes_atomic(buf.getvalue(), out)
    return Path(out)
