"""Crop geometry, priors and image decoding: pure functions, no Ray, no MTCNN."""
import io

import numpy as np
import pytest
from PIL import Image

from core.faces import CropSettings, Priors, centre_box, crop_box, cut, iou, miss_box, pick_weak
from serving.detector import decode


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_centre_box_is_the_recipes_300_on_384x512_and_scales():
    assert centre_box(384, 512, 300 / 384) == (42.0, 106.0, 342.0, 406.0)
    x1, y1, x2, y2 = centre_box(768, 1024, 300 / 384)
    assert (x2 - x1, y2 - y1) == (600, 600)


def test_crop_box_squares_moves_inside_and_clips():
    s = CropSettings()
    assert crop_box((100, 100, 200, 240), 384, 512, s) == (80, 100, 220, 240)      # square, same centre
    x1, y1, x2, y2 = crop_box((-30, 10, 90, 130), 384, 512, s)                        # pokes out left
    assert (x1, x2 - x1, y2 - y1) == (0, 120, 120)
    assert crop_box((0, 0, 500, 400), 384, 512, s) == (0, 0, 384, 500)               # wider than image
    m = crop_box((100, 100, 200, 200), 384, 512, CropSettings(margin=30, square=False))
    assert m == (70, 70, 230, 230)
    m2 = crop_box((200, 200, 400, 400), 768, 1024, CropSettings(margin=30, square=False))
    assert m2 == (140, 140, 460, 460)                                                # margin scales with size


def test_cut_is_square_rgb_at_size():
    img = Image.new("RGB", (384, 512), (10, 20, 30))
    out = cut(img, (10, 20, 110, 170), 96)
    assert out.size == (96, 96) and out.mode == "RGB"


def test_priors_person_leans_on_the_global_median():
    g = np.array([0.25, 0.2, 0.75, 0.6])
    p = np.array([0.35, 0.3, 0.85, 0.7])
    rows = [("a", g)] * 10 + [("b", p)] * 3
    pri = Priors.from_detections(rows)
    s = CropSettings(prior_strength=3.0)
    box, how = pri.box("b", 100, 100, s)
    assert how == "person_prior" and box == pytest.approx(tuple((3 * p + 3 * g) / 6 * 100))
    assert pri.box("", 100, 100, s) == (pytest.approx(tuple(g * 100)), "global_prior")
    assert pri.box("b", 100, 100, CropSettings(person_prior=False))[1] == "global_prior"
    assert Priors().box("b", 384, 512, s) == (centre_box(384, 512, s.centre_frac), "centre")
    assert pri.box("b", 384, 512, CropSettings(fallback="centre"))[1] == "centre"


def test_weak_face_must_be_probable_and_near_the_prior():
    s = CropSettings(weak_min_prob=0.8, weak_min_iou=0.3)
    prior = (100, 100, 200, 200)
    far = (300, 300, 400, 400, 0.99)
    weak = (100, 100, 200, 200, 0.5)
    good = (110, 105, 205, 210, 0.9)
    better = (95, 100, 195, 205, 0.95)
    assert pick_weak([far, weak], prior, s) is None
    assert pick_weak([far, weak, good, better], prior, s) == better


def test_a_miss_takes_a_weak_face_near_the_prior_else_the_prior():
    prior, s = (100, 100, 200, 200), CropSettings(weak_min_prob=0.5)
    assert miss_box([(105, 100, 205, 200, 0.7)], prior, "global_prior", s) == ((105, 100, 205, 200), 0.7, "weak_detect")
    box, prob, how = miss_box([(300, 300, 400, 400, 0.99)], prior, "global_prior", s)
    assert (box, how) == (prior, "global_prior") and np.isnan(prob)
    assert miss_box([(105, 100, 205, 200, 0.7)], prior, "centre", CropSettings(fallback="centre"))[2] == "centre"


def test_settings_key_changes_with_any_setting():
    assert CropSettings().key == CropSettings(margin=0, thresholds=[0.6, 0.7, 0.7]).key
    assert len({CropSettings().key, CropSettings(margin=1).key, CropSettings(size=160).key,
                CropSettings(thresholds=(0.5, 0.6, 0.7)).key}) == 4
    with pytest.raises(ValueError, match="fallback"):
        CropSettings(fallback="middle")


# -- decoding bad images ---------------------------------------------------------------------
def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


PORTRAIT = Image.linear_gradient("L").resize((96, 128)).convert("RGB")
BAD = {  # name: (bytes, decodes?)
    "zero_bytes": (b"", False),
    "not_an_image": (b"train,csv,not,an,image\n" * 20, False),
    "truncated": (_jpeg(PORTRAIT)[:700], True),
    "greyscale": (_jpeg(PORTRAIT.convert("L")), True),
    "rgba_png": (_png(PORTRAIT.convert("RGBA")), True),
    "cmyk": (_jpeg(PORTRAIT.convert("CMYK")), True),
    "tiny": (_jpeg(PORTRAIT.resize((6, 8))), True),
}


@pytest.mark.parametrize("name", BAD)
def test_decode_never_raises(tmp_path, name):
    data, decodes = BAD[name]
    f = tmp_path / "img.jpg"
    f.write_bytes(data)
    d = decode(f)
    if decodes:
        assert d.img is not None and d.img.mode == "RGB" and d.error == ""
    else:
        assert d.img is None and d.error


def test_transparent_png_turns_white_not_black(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(_png(Image.new("RGBA", (40, 40), (0, 0, 0, 0))))
    assert decode(f).img.getpixel((5, 5)) == (255, 255, 255)
