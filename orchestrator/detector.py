"""Image decoding and the MTCNN face detector (facenet-pytorch), as used by one worker.

Both never raise on a bad image: decoding returns an error string, detection returns None.
Images come as phones and exports make them: EXIF-rotated (turned upright here, so boxes are
in upright pixels), 16-bit, CMYK, palette, with alpha; an image too large to decode safely
(or a decompression bomb) is refused from its header, before a pixel is decoded.
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.faces import REF_SIDE, CropSettings

log = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000   # larger images are refused before decoding: a 12000x12000 photo is 432 MB of RGB
#                           per worker before MTCNN's copies (phones take 12-50 MP; faces need far fewer)
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")   # 16/32-bit grey: PIL's convert() clips to 255


@dataclass
class Decoded:
    img: Image.Image | None     # RGB, full size
    error: str = ""             # why it could not be decoded at all
    note: str = ""              # decodable but odd (truncated, greyscale, CMYK, alpha)
    digest: str = ""            # sha1 of the file's bytes (names the crop made from it)


def _wide_to_grey(img: Image.Image) -> Image.Image:
    """16-bit (or wider) grey scaled to 8 bits, not clipped: convert("L") turns a 16-bit photo white."""
    a = np.asarray(img, dtype=np.float64)
    top = 255.0 if img.mode in ("I", "F") and a.max(initial=0) <= 255 else 65535.0   # "I" may hold 8-bit values
    return Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str]:
    if img.mode == "RGB":
        return img, ""
    note = f"mode {img.mode}"
    if img.mode in WIDE_MODES:
        return _wide_to_grey(img).convert("RGB"), note
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")       # transparent pixels become white, not black
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg, note
    return img.convert("RGB"), note


def decode(path: Path) -> Decoded:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Decoded(None, f"unreadable file: {exc}")
    if not data:
        return Decoded(None, "empty file (0 bytes)")
    dec = decode_bytes(data)
    dec.digest = hashlib.sha1(data).hexdigest()
    return dec


def _open(data: bytes) -> tuple[Image.Image | None, str]:
    """The image with only its header read, or (None, why it is refused)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # refused below, by size
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return None, "not an image PIL can read"
    except Image.DecompressionBombError as exc:
        return None, f"refused before decoding: {exc}"
    except Exception as exc:  # PIL raises many types on a garbled header
        return None, f"cannot read the image header: {exc}"
    w, h = img.size
    if w * h > MAX_PIXELS:
        return None, (f"refused before decoding: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the "
                      f"{MAX_PIXELS / 1e6:.0f} MP limit (a decompression bomb, or a photo to downscale)")
    return img, ""


def _upright(img: Image.Image) -> tuple[Image.Image, str]:
    """The image turned as its EXIF orientation says (phones store portraits sideways)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (1, None):
            return img, ""
        return ImageOps.exif_transpose(img), f"EXIF orientation {orientation}"
    except Exception as exc:  # a garbled EXIF block must not lose the picture
        return img, f"EXIF unreadable ({exc}), kept as stored"


def decode_bytes(data: bytes) -> Decoded:
    img, why = _open(data)
    if img is None:
        return Decoded(None, why)
    try:
        img.load()
        note = ""
    except Exception as exc:  # PIL's decoders raise many types on damaged data
        # a truncated JPEG still holds its top rows: keep what decodes rather than lose the image
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            note = f"partly decoded ({exc})"
        except Exception as exc2:  # PIL raises many types on garbage
            return Decoded(None, f"cannot decode: {exc2}")
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    if min(img.size) < 1:
        return Decoded(None, f"empty image {img.size}")
    img, turn_note = _upright(img)
    try:
        rgb, mode_note = _to_rgb(img)
    except (ValueError, OSError) as exc:   # a mode PIL cannot turn into RGB
        return Decoded(None, f"cannot convert mode {img.mode} to RGB: {exc}")
    return Decoded(rgb, note="; ".join(n for n in (note, turn_note, mode_note) if n))


class Detector:
    """Two MTCNNs built once per worker: the main pass and the low-threshold second pass."""

    def __init__(self, s: CropSettings, device: str = "cpu"):
        from facenet_pytorch import MTCNN   # weights ship in the wheel: nothing downloads
        self.s = s
        self.device = device
        common = dict(factor=s.factor, device=device)   # min_face_size: set per image size
        self.main = _channels_last(MTCNN(thresholds=list(s.thresholds), select_largest=True, **common))
        self.second = _channels_last(MTCNN(thresholds=list(s.second_thresholds), keep_all=True, **common))

    def small(self, img: Image.Image) -> Image.Image:
        if self.s.detect_scale == 1:
            return img
        w, h = img.size
        k = 1 / self.s.detect_scale
        if abs(k - round(k)) < 1e-6:
            return img.reduce(int(round(k)))   # box filter: 5x faster than resize, as good for MTCNN
        return img.resize((max(1, round(w * self.s.detect_scale)), max(1, round(h * self.s.detect_scale))),
                          Image.BILINEAR)

    def detect(self, imgs: list[Image.Image]) -> list[tuple[np.ndarray, float] | None]:
        """Best face (box in source px, prob) per image; same-size images go as one batch."""
        out: list = [None] * len(imgs)
        by_size: dict[tuple, list[int]] = {}
        for i, img in enumerate(imgs):
            by_size.setdefault(img.size, []).append(i)
        for size, idx in by_size.items():
            self._min_face(self.main, size)
            smalls = [self.small(imgs[i]) for i in idx]
            for i, small, res in zip(idx, smalls, self._batch(smalls)):
                out[i] = _scale_best(res, imgs[i].size[0] / small.size[0])
        return out

    def _min_face(self, mtcnn, size: tuple[int, int]) -> None:
        """min_face_size is in source px of a 384-wide image; MTCNN wants px of the copy it sees."""
        mtcnn.min_face_size = max(12, round(self.s.min_face_size * min(size) / REF_SIDE * self.s.detect_scale))

    def _batch(self, smalls: list[Image.Image]) -> list:
        try:
            boxes, probs = self.main.detect(smalls)
            return list(zip(boxes, probs))
        except Exception as exc:  # facenet's batch path trips on some inputs; fall back to one by one
            log.debug("batch detect failed (%s); detecting one image at a time", exc)
            return [self._one(self.main, im) for im in smalls]

    @staticmethod
    def _one(mtcnn, img):
        try:
            return mtcnn.detect(img)
        except Exception as exc:  # a degenerate image must not fail the batch
            log.warning("MTCNN failed on one image (%s); treating it as no face", exc)
            return None, None

    def weak_faces(self, img: Image.Image, found) -> list[tuple[float, float, float, float, float]]:
        """What a fallback may still pick for an image without a confident face: the main pass's
        best face ``found`` (below the threshold) and, with second_pass, the low-threshold faces."""
        cands = [] if found is None else [(*(float(v) for v in found[0]), float(found[1]))]
        if self.s.second_pass and min(img.size) >= self.s.min_side:
            cands += self.candidates(img)
        return cands

    def candidates(self, img: Image.Image) -> list[tuple[float, float, float, float, float]]:
        """Every face the low-threshold pass sees: (x1, y1, x2, y2, prob) in source px."""
        small = self.small(img)
        self._min_face(self.second, img.size)
        boxes, probs = self._one(self.second, small)
        if boxes is None:
            return []
        k = img.size[0] / small.size[0]
        return [(*(float(v) * k for v in b), float(p)) for b, p in zip(boxes, probs)]


def _channels_last(mtcnn):
    """Same numbers, half the time: torch's CPU max-pool is 3-6x faster on channels-last tensors,
    and MTCNN spends half its time in max-pool (benchmarks/README.md)."""
    import torch
    for name in ("pnet", "rnet", "onet"):
        setattr(mtcnn, name, getattr(mtcnn, name).to(memory_format=torch.channels_last))
    return mtcnn


def _scale_best(res, k: float):
    boxes, probs = res if res is not None else (None, None)
    if boxes is None or len(boxes) == 0 or probs is None or probs[0] is None:
        return None
    return np.asarray(boxes[0], dtype=float) * k, float(probs[0])
