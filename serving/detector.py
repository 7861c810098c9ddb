"""Image decoding and the MTCNN face detector (facenet-pytorch), as used by one worker or server.

Decoding never raises on a bad image: it returns an error string. Images come as phones and
exports make them: EXIF-rotated (turned upright here, so boxes are in upright pixels), 16-bit,
CMYK, palette, with alpha; an image too large to decode safely (or a decompression bomb) is
refused from its header, before a pixel is decoded.

Detection returns None only where MTCNN finds no face; any other failure (a CUDA out-of-memory,
a broken model) raises, so a stage stops with its cause instead of caching fallback crops.

Nothing here holds process-wide or per-call state: a truncated file is read without PIL's
global ``LOAD_TRUNCATED_IMAGES`` switch, and the smallest face is an argument of each detection,
so a server's threads may decode and detect at once.
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.faces import REF_SIDE, CropSettings

MAX_PIXELS = 64_000_000   # larger images are refused before decoding: a 12000x12000 photo is 432 MB of RGB
#                           per worker before MTCNN's copies (phones take 12-50 MP; faces need far fewer)
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")   # 16/32-bit grey: PIL's convert() clips to 255
# what PIL's format plugins raise on damaged or cut files (SyntaxError and struct.error are theirs too)
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
JPEG_END = b"\xff\xd9"    # the end-of-image marker: libjpeg finishes a cut file at it, greying the rest


@dataclass
class Decoded:
    img: Image.Image | None     # RGB, full size
    error: str = ""             # why it could not be decoded at all
    note: str = ""              # decodable but odd (truncated, greyscale, CMYK, alpha)
    digest: str = ""            # sha1 of the file's bytes (names the crop made from it)


@dataclass(frozen=True)
class ImageDecoder:
    """How to read image files: a photo cut short keeps the rows that arrived (a face is often in
    them); a face crop is written whole, so one cut short is refused (``keep_partial=False``)."""
    keep_partial: bool = True
    max_pixels: int = MAX_PIXELS

    def file(self, path: Path) -> Decoded:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return Decoded(None, f"unreadable file: {exc}")
        if not data:
            return Decoded(None, "empty file (0 bytes)")
        dec = self.data(data)
        dec.digest = hashlib.sha1(data).hexdigest()
        return dec

    def data(self, data: bytes) -> Decoded:
        img, why = self._open(data)
        if img is None:
            return Decoded(None, why)
        img, note, why = self._load(img, data)
        if img is None:
            return Decoded(None, why)
        if min(img.size) < 1:
            return Decoded(None, f"empty image {img.size}")
        img, turn_note = _upright(img)
        try:
            rgb, mode_note = _to_rgb(img)
        except PIL_ERRORS as exc:   # a mode PIL cannot turn into RGB
            return Decoded(None, f"cannot convert mode {img.mode} to RGB: {exc}")
        return Decoded(rgb, note="; ".join(n for n in (note, turn_note, mode_note) if n))

    def _open(self, data: bytes) -> tuple[Image.Image | None, str]:
        """The image with only its header read, or (None, why it is refused)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # refused below, by size
                img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            return None, "not an image PIL can read"
        except Image.DecompressionBombError as exc:
            return None, f"refused before decoding: {exc}"
        except PIL_ERRORS as exc:
            return None, f"cannot read the image header: {exc}"
        w, h = img.size
        if w * h > self.max_pixels:
            return None, (f"refused before decoding: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the "
                          f"{self.max_pixels / 1e6:.0f} MP limit (a decompression bomb, or a photo to downscale)")
        return img, ""

    def _load(self, img: Image.Image, data: bytes) -> tuple[Image.Image | None, str, str]:
        """(image, note, error): the pixels, those that arrived of a damaged file, or why none."""
        try:
            img.load()
            return img, "", ""
        except PIL_ERRORS as exc:
            cut = exc
        if not self.keep_partial:
            return None, "", f"cannot decode: {cut}"
        try:
            part = _partial(img, data)
        except PIL_ERRORS as exc:
            return None, "", f"cannot decode: {exc}"
        if part is None:
            return None, "", f"cannot decode: {cut}"
        return part, f"partly decoded ({cut})", ""


def _partial(img: Image.Image, data: bytes) -> Image.Image | None:
    """What a failed ``load`` decoded before the data ran out or went bad, or None if nothing.
    A JPEG is decoded again with its end marker added (what PIL's global truncated-image switch
    does, here for this file only); other formats keep the rows already in the image's memory."""
    if img.format == "JPEG":
        whole = Image.open(io.BytesIO(data + JPEG_END))
        whole.load()
        return whole
    if getattr(img, "_im", None) is None:   # failed before any pixel memory was made
        return None
    img.tile = []   # the decoder stopped: what it wrote is all there is
    img.load()
    return img


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


def _upright(img: Image.Image) -> tuple[Image.Image, str]:
    """The image turned as its EXIF orientation says (phones store portraits sideways)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (1, None):
            return img, ""
        return ImageOps.exif_transpose(img), f"EXIF orientation {orientation}"
    except PIL_ERRORS as exc:  # a garbled EXIF block must not lose the picture
        return img, f"EXIF unreadable ({exc}), kept as stored"


PHOTOS = ImageDecoder()                     # training, eval and served photos
CROPS = ImageDecoder(keep_partial=False)    # face crops sent to a served model


def decode(path: Path) -> Decoded:
    """A photo file, decoded as ``PHOTOS`` does."""
    return PHOTOS.file(path)


def decode_bytes(data: bytes) -> Decoded:
    """A photo's bytes, decoded as ``PHOTOS`` does."""
    return PHOTOS.data(data)


Face = tuple[np.ndarray, float]     # box (x1, y1, x2, y2) in source px, probability


class Detector:
    """MTCNN's three networks, built once per worker and shared by the main pass and the
    low-threshold second pass. Each pass hands its thresholds and smallest face to MTCNN as
    arguments, so one detector serves concurrent threads."""

    def __init__(self, s: CropSettings, device: str = "cpu"):
        import torch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet  # weights ship in the wheel: nothing downloads
        self.s = s
        self.device = device
        self._torch_device = torch.device(device)
        self.nets = tuple(_channels_last(net().to(self._torch_device).eval()) for net in (PNet, RNet, ONet))

    def small(self, img: Image.Image) -> Image.Image:
        if self.s.detect_scale == 1:
            return img
        w, h = img.size
        k = 1 / self.s.detect_scale
        if abs(k - round(k)) < 1e-6:
            return img.reduce(int(round(k)))   # box filter: 5x faster than resize, as good for MTCNN
        return img.resize((max(1, round(w * self.s.detect_scale)), max(1, round(h * self.s.detect_scale))),
                          Image.BILINEAR)

    def min_face(self, size: tuple[int, int]) -> int:
        """min_face_size is in source px of a 384-wide image; MTCNN wants px of the copy it sees."""
        return max(12, round(self.s.min_face_size * min(size) / REF_SIDE * self.s.detect_scale))

    def detect(self, imgs: list[Image.Image]) -> list[Face | None]:
        """Largest face per image (None: no face found); same-size images go as one batch."""
        out: list[Face | None] = [None] * len(imgs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(imgs):
            by_size.setdefault(img.size, []).append(i)
        for size, idx in by_size.items():
            smalls = [self.small(imgs[i]) for i in idx]
            for i, small, faces in zip(idx, smalls, self.faces(smalls, self.min_face(size), self.s.thresholds)):
                out[i] = _largest(faces, imgs[i].size[0] / small.size[0])
        return out

    def faces(self, smalls: list[Image.Image], min_face: int, thresholds) -> list[np.ndarray]:
        """Every face MTCNN finds in each of same-size images: rows of x1, y1, x2, y2, prob."""
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face
        if min(smalls[0].size) < min_face:   # no pyramid level fits a face this big: no face (MTCNN would raise)
            return [np.empty((0, 5)) for _ in smalls]
        with torch.no_grad():
            boxes, _ = detect_face(smalls, min_face, *self.nets, list(thresholds), self.s.factor, self._torch_device)
        return [np.asarray(b, dtype=float).reshape(-1, 5) for b in boxes]

    def weak_faces(self, img: Image.Image, found: Face | None) -> list[tuple[float, float, float, float, float]]:
        """What a fallback may still pick for an image without a confident face: the main pass's
        best face ``found`` (below the threshold) and, with second_pass, the low-threshold faces."""
        cands = [] if found is None else [(*(float(v) for v in found[0]), float(found[1]))]
        if self.s.second_pass and min(img.size) >= self.s.min_side:
            cands += self.candidates(img)
        return cands

    def candidates(self, img: Image.Image) -> list[tuple[float, float, float, float, float]]:
        """Every face the low-threshold pass sees: (x1, y1, x2, y2, prob) in source px."""
        small = self.small(img)
        faces = self.faces([small], self.min_face(img.size), self.s.second_thresholds)[0]
        k = img.size[0] / small.size[0]
        return [(*(float(v) * k for v in row[:4]), float(row[4])) for row in faces]


def _channels_last(net):
    """Same numbers, half the time: torch's CPU max-pool is 3-6x faster on channels-last tensors,
    and MTCNN spends half its time in max-pool (benchmarks/README.md)."""
    import torch
    return net.to(memory_format=torch.channels_last)


def _largest(faces: np.ndarray, k: float) -> Face | None:
    """The largest face (as MTCNN's select_largest picks it), scaled by ``k`` to source px."""
    if len(faces) == 0:
        return None
    best = faces[np.argmax((faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1]))]
    return best[:4] * k, float(best[4])
