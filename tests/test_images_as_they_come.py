"""Images as users bring them: each decodes upright to RGB, or is refused with a reason (never a
raise), and a preprocessing run over a folder of them records the refused ones and crops the rest."""
import numpy as np
import pytest
from PIL import Image, ImageFile

from serving.detector import MAX_PIXELS, decode
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


def test_preprocess_records_refused_images_and_crops_the_rest(tmp_path):
    """Every kind above among the training photos of a small study: the refused ones are rows
    with a reason in the manifest's error column, every other image is cropped, and the run ends."""
    from core.demo_data import DemoSpec, write_demo_data
    from core.faces import CropSettings
    from core.labels import IMAGE_KINDS
    from core.manifest import crop_whole
    from core.workspace import Workspace
    from orchestrator.infra.ray_session import ray_session
    from orchestrator.stages.preprocess import preprocess
    from tests.bad_input import count
    data = write_demo_data(tmp_path / "data", DemoSpec(train_persons=3, eval_persons=1))
    folders = sorted((data / "train" / "images").iterdir())
    placed = {}
    for i, (kind, (make, suffix, _)) in enumerate(KINDS.items()):
        folder, image_kind = folders[i // len(IMAGE_KINDS)], list(IMAGE_KINDS)[i % len(IMAGE_KINDS)]
        for old in folder.glob(f"{image_kind}.*"):
            old.unlink()
        (folder / f"{image_kind}{suffix}").write_bytes(make())
        placed[(folder / f"{image_kind}{suffix}").relative_to(data).as_posix()] = kind
    ws = Workspace(tmp_path / "ws").make()
    with ray_session(num_cpus=2):
        manifest = preprocess(data, ws, CropSettings(size=64), progress=False)
    rows = manifest.set_index("path")
    for path, kind in placed.items():
        row = rows.loc[path]
        refused = row["crop"] == ""
        count("image in a preprocess run", "refused" if refused else "warned" if row["note"] else "accepted")
        assert refused == (not KINDS[kind][2]), (kind, row["error"], row["note"])
        assert bool(row["error"]) == refused, (kind, row["error"])
        if not refused:
            assert crop_whole(ws.crops / row["crop"]) and row["x2"] <= 48 + 0.5 and row["y2"] <= 64 + 0.5, (kind, row)
    assert (manifest.loc[~manifest["path"].isin(placed), "crop"] != "").all()   # the rest goes on
    assert manifest.attrs["summary"].failed == sum(not d for _, _, d in KINDS.values())
