"""A photo's face crop, made as `preprocess` makes an eval image's: the same MTCNN settings, the
same threshold and weak-face rule, the same fallback box (the global prior of the crops the
models were trained on, or the centre crop) and the same JPEG encoding. A served model that
crops otherwise sees other pixels than its training did and answers worse without a sign.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.faces import CropSettings, Priors, crop_box, crop_jpeg, miss_box

from .detector import Detector, decode_bytes


class PhotoError(ValueError):
    """Photos that cannot be decoded; the message names each row and why."""


@dataclass(frozen=True)
class FaceCrop:
    crop: bytes     # JPEG bytes, as preprocess writes a crop file
    method: str     # detect | weak_detect | global_prior | centre
    prob: float     # the face's probability (NaN for a prior or centre box)


class PhotoCropper:
    """Crops photos (encoded bytes) with ``settings`` and the prior of the training crops."""

    def __init__(self, settings: CropSettings, prior: Priors, device: str = "cpu"):
        self.s, self.prior = settings, prior
        self.det = Detector(settings, device)   # holds no per-call state: a server's threads share it

    def crop(self, photos: list[bytes], rows: list[int] | None = None) -> list[FaceCrop]:
        """One crop per photo; ``rows`` number the photos in errors (default 0, 1, ...)."""
        decs = [decode_bytes(p) if p else None for p in photos]
        bad = [f"row {r}: {'empty photo' if d is None else d.error} ({len(p or b'')} bytes)"
               for r, p, d in zip(rows or range(len(photos)), photos, decs) if d is None or d.img is None]
        if bad:
            raise PhotoError("; ".join(bad) + "; send JPEG or PNG photos")
        # as preprocess: tiny images skip the detector; same-size photos are detected as a batch
        ok = [i for i, d in enumerate(decs) if min(d.img.size) >= self.s.min_side]
        found = dict(zip(ok, self.det.detect([decs[i].img for i in ok])))
        return [self._one(d.img, found.get(i)) for i, d in enumerate(decs)]

    def _one(self, img, found) -> FaceCrop:
        w, h = img.size
        if found is not None and found[1] >= self.s.prob_threshold:
            face, prob, method = found[0], found[1], "detect"
        else:   # a person of a new photo is unknown: the global prior, as for an eval image
            prior, how = self.prior.box("", w, h, self.s)
            face, prob, method = miss_box(self.det.weak_faces(img, found), prior, how, self.s)
        return FaceCrop(crop_jpeg(img, crop_box(face, w, h, self.s), self.s), method, float(prob))
