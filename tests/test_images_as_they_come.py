"""Images as users bring them: each decodes upright to RGB, or is refused with a reason (never a
raise), and a preprocessing run over a folder of them records the refused ones and crops the rest."""
import numpy as np
import pytest
from PIL import Image, ImageFile

from orchestrator.detector import MAX_PIXELS, decode
from tests.image_files import KINDS, exif_rotated, upright


def _halves(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(img, dtype=float)
    h = a.shape[0]
    return a[: h // 4].mean(axis=(0, 1)), a[-h // 4:].mean(axis=(0, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_decodes_upright_or_is_refused_with_a_reason(tmp_path, kind):
    make, suffix, decodes = KINDS[kind]
    f = tmp_path / f"normal{suffix}"
    f.write_bytes(make())
    dec = decode(f)
    if not decodes:
        assert dec.img is None and dec.error, dec
        return
    assert dec.error == "" and dec.img.mode == "RGB" and dec.img.size == upright().size, dec
    top, bottom = _halves(dec.img)
    if kind == "16-bit PNG":   # a ramp from black to white, scaled to 8 bits rather than clipped to white
        assert 100 < np.asarray(dec.img).mean() < 155 and bottom.mean() > 200 > 50 > top.mean()
    elif dec.note.startswith("partly decoded"):
        assert top[0] > top[2] + 100, top   # the rows that arrived are the red top
    elif top[0] - top[2] > 100:            # colour kept: red on top, blue below
        assert bottom[2] > bottom[0] + 100, (top, bottom)
    else:                                  # grey: red is the lighter of the two
        assert top.mean() > bottom.mean() + 20, (top, bottom)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_rotation_is_honoured(tmp_path, fmt):
    f = tmp_path / "mask1.jpg"
    f.write_bytes(exif_rotated(fmt))
    assert Image.open(f).size == (64, 48)           # stored sideways, as the phone wrote it
    dec = decode(f)
    assert dec.img.size == (48, 64) and "EXIF orientation 6" in dec.note
    top, bottom = _halves(dec.img)
    assert top[0] > top[2] + 100 and bottom[2] > bottom[0] + 100


def test_oversized_image_is_refused_from_its_header(tmp_path, monkeypatch):
    """Refused before a pixel is decoded: Image.load is never called."""
    f = tmp_path / "normal.jpg"
    f.write_bytes(KINDS["12000x12000 JPEG"][0]())
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded an oversized image"))
    dec = decode(f)
    assert dec.img is None and "12000x12000" in dec.error and f"{MAX_PIXELS // 1_000_000} MP" in dec.error
