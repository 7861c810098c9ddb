"""Face-crop geometry: settings, box maths, the fallback priors and the crop itself.

Pure functions on numbers and PIL images (no Ray, no MTCNN), so they are testable alone.
A box is (x1, y1, x2, y2) in source pixels; a *normalised* box divides by (w, h, w, h).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from PIL import Image

REF_SIDE = 384          # the competition's images are 384x512; pixel settings are at this scale


@dataclass(frozen=True)
class CropSettings:
    """Everything that changes a crop; any change gives new crops (see ``key``)."""
    size: int = 224                       # crop side in pixels (square RGB); trainers resize to 224
    margin: float = 0.0                   # pixels added on each side of the face box, at 384 px width
    #                                       (recipe: default MTCNN, margin 0; 30 px costs IoU, see benchmarks)
    square: bool = True                   # widen the face box to a square, so the crop is not stretched
    prob_threshold: float = 0.9           # a face below this probability counts as not found
    min_face_size: int = 160              # smallest face MTCNN looks for, px at 384 px width (MTCNN: 20;
    #                                       portraits hold faces of 190-250 px, so the pyramid stays small)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)   # P/R/O-net thresholds (MTCNN default)
    factor: float = 0.709                 # image pyramid step (MTCNN default)
    detect_scale: float = 1 / 3           # detect on a copy this much smaller (a 3x3 box reduction)
    weak_min_prob: float = 0.5            # a face below prob_threshold still counts if this probable ...
    weak_min_iou: float = 0.3             # ... and overlapping the prior box this much ("weak_detect")
    second_pass: bool = False             # re-detect misses at low thresholds for more weak faces
    #                                       (off: on real faces the prior did as well, and cheaper)
    second_thresholds: tuple[float, float, float] = (0.05, 0.05, 0.05)
    fallback: str = "prior"               # "prior" (median of detected boxes) or "centre" (recipe)
    person_prior: bool = True             # train images: lean the prior towards the person's own photos
    prior_strength: float = 10.0          # person prior = (n * person + k * global) / (n + k)
    centre_frac: float = 300 / 384        # recipe's blind crop: 300x300 on 384x512, side / short side
    min_side: int = 32                    # smaller images skip detection and get the fallback box
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.fallback not in ("prior", "centre"):
            raise ValueError(f"CropSettings.fallback {self.fallback!r}: use 'prior' or 'centre'")
        if not 0 < self.detect_scale <= 1:
            raise ValueError(f"CropSettings.detect_scale {self.detect_scale}: use a value in (0, 1]")
        # one spelling per value (20 == 20.0, list == tuple), so equal settings share one key
        for f in fields(self):
            cast = {"float": float, "int": int, "bool": bool}.get(f.type)
            if f.type.startswith("tuple"):
                cast = lambda v: tuple(float(x) for x in v)  # noqa: E731
            if cast:
                object.__setattr__(self, f.name, cast(getattr(self, f.name)))
        for name in ("thresholds", "second_thresholds"):   # MTCNN indexes three; one over 1 finds nothing
            t = getattr(self, name)
            if len(t) != 3 or not all(0 <= v <= 1 for v in t):
                raise ValueError(f"CropSettings.{name} {','.join(f'{v:g}' for v in t)}: give three "
                                 "probabilities in [0, 1], for MTCNN's P-, R- and O-net (e.g. 0.6,0.7,0.7)")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> str:
        """Short hash naming the crop folder: crops made with other settings never mix."""
        return hashlib.sha1(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:10]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def centre_box(w: int, h: int, frac: float) -> tuple[float, float, float, float]:
    side = frac * min(w, h)
    return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2


def normalise(box, w: int, h: int) -> np.ndarray:
    return np.asarray(box, dtype=float) / np.array([w, h, w, h])


def denormalise(nbox, w: int, h: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(nbox) * np.array([w, h, w, h]))


def crop_box(face, w: int, h: int, s: CropSettings) -> tuple[float, float, float, float]:
    """The region to cut: the face box plus margin, squared, moved inside the image, clipped."""
    m = s.margin * min(w, h) / REF_SIDE
    x1, y1, x2, y2 = face[0] - m, face[1] - m, face[2] + m, face[3] + m
    if s.square:
        side = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    # shift (not shrink) a box that pokes out, so the face keeps its place in the crop
    dx = -x1 if x1 < 0 else min(0.0, w - x2)
    dy = -y1 if y1 < 0 else min(0.0, h - y2)
    x1, x2, y1, y2 = x1 + dx, x2 + dx, y1 + dy, y2 + dy
    return max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)


def cut(img: Image.Image, box, size: int) -> Image.Image:
    return img.resize((size, size), Image.BICUBIC, box=tuple(float(v) for v in box))


def crop_jpeg(img: Image.Image, box, s: CropSettings) -> bytes:
    """The crop file's bytes: training decodes these, so a crop made elsewhere must be made alike."""
    buf = io.BytesIO()
    cut(img, box, s.size).save(buf, format="JPEG", quality=s.jpeg_quality)
    return buf.getvalue()


@dataclass
class Priors:
    """Where faces usually are, as normalised boxes: over all detections and per person."""
    global_box: np.ndarray | None = None
    person: dict = field(default_factory=dict)   # person -> (median box, count)

    @classmethod
    def from_detections(cls, rows) -> "Priors":
        """rows: iterable of (person, normalised box) of detected faces."""
        by_person: dict[str, list] = {}
        all_boxes = []
        for person, nbox in rows:
            all_boxes.append(nbox)
            if person:
                by_person.setdefault(person, []).append(nbox)
        g = np.median(np.asarray(all_boxes), axis=0) if all_boxes else None
        return cls(g, {p: (np.median(np.asarray(b), axis=0), len(b)) for p, b in by_person.items()})

    def box(self, person: str, w: int, h: int, s: CropSettings) -> tuple[tuple[float, ...], str]:
        """(fallback box in source px, how it was made: person_prior | global_prior | centre)."""
        if s.fallback == "centre" or self.global_box is None:
            return centre_box(w, h, s.centre_frac), "centre"
        if s.person_prior and person in self.person:
            # shrink the person's few boxes towards the global median (empirical Bayes)
            pbox, n = self.person[person]
            k = s.prior_strength
            return denormalise((n * pbox + k * self.global_box) / (n + k), w, h), "person_prior"
        return denormalise(self.global_box, w, h), "global_prior"


def pick_weak(candidates, prior, s: CropSettings):
    """The most probable below-threshold face that agrees with the prior, or None.

    candidates: [(x1, y1, x2, y2, prob), ...] in source px: the main pass's best face, if any,
    and the second pass's faces."""
    ok = [c for c in candidates if c[4] >= s.weak_min_prob and iou(c[:4], prior) >= s.weak_min_iou]
    return max(ok, key=lambda c: c[4]) if ok else None


def miss_box(candidates, prior, how: str, s: CropSettings) -> tuple[tuple[float, ...], float, str]:
    """(face box, prob, method) of an image without a confident face: a weak face that agrees
    with the prior (fallback "prior"), else the prior box itself (method ``how``, prob NaN)."""
    face = pick_weak(candidates, prior, s) if s.fallback == "prior" else None
    if face:
        return tuple(face[:4]), float(face[4]), "weak_detect"
    return tuple(prior), float("nan"), how
