"""Image files as users bring them (phones, exports, half-copied folders), made in memory.

Each maker returns the file's bytes; ``KINDS`` maps a kind to (maker, file suffix, whether it
must decode). Shared by the decoder's tests and the preprocessing run over a mixed folder.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, BLUE = (220, 30, 30), (30, 30, 220)


def upright(w: int = 48, h: int = 64) -> Image.Image:
    """A portrait whose top half is red and bottom half blue: its orientation can be read back."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2], a[h // 2:] = RED, BLUE
    return Image.fromarray(a)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated(fmt: str = "PNG") -> bytes:
    """A phone portrait stored sideways with EXIF orientation 6 ("turn 90° clockwise to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright().transpose(Image.Transpose.ROTATE_90), fmt, exif=exif.tobytes())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels and holds almost none: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_claiming(w: int, h: int) -> bytes:
    """A small JPEG whose frame header says w x h (what PIL reads before decoding)."""
    data = bytearray(encode(upright(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def truncated(jpeg: bytes) -> bytes:
    """The file cut two thirds into its image data (a half-copied photo): the header is whole."""
    scan = jpeg.index(b"\xff\xda")
    return jpeg[:scan + (len(jpeg) - scan) * 2 // 3]


def bad_crc_png() -> bytes:
    data = bytearray(encode(upright(), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0xFF          # the IDAT chunk's CRC, one byte flipped
    return bytes(data)


def sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 48 * 64).reshape(64, 48).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


KINDS = {   # kind: (bytes, suffix, decodes)
    "zero-byte": (lambda: b"", ".jpg", False),
    "text named .jpg": (lambda: b"id,gender\n1,male\n", ".jpg", False),
    "truncated JPEG": (lambda: truncated(encode(upright(), "JPEG")), ".jpg", True),
    "PNG with a bad CRC": (bad_crc_png, ".png", True),
    "CMYK JPEG": (lambda: encode(upright().convert("CMYK"), "JPEG"), ".jpg", True),
    "16-bit PNG": (sixteen_bit_png, ".png", True),
    "palette PNG": (lambda: encode(upright().convert("P"), "PNG"), ".png", True),
    "LA PNG": (lambda: encode(upright().convert("LA"), "PNG"), ".png", True),
    "grayscale JPEG": (lambda: encode(upright().convert("L"), "JPEG"), ".jpeg", True),
    "EXIF-rotated JPEG": (lambda: exif_rotated("JPEG"), ".JPG", True),
    "12000x12000 JPEG": (lambda: jpeg_claiming(12000, 12000), ".jpg", False),
    "decompression bomb PNG": (lambda: png_header_only(50000, 50000), ".png", False),
}
