"""The decoder and the face detector hold no process-wide or per-call state, and only a real "no
face found" falls back: a truncated photo keeps the rows that arrived without PIL's global switch,
a truncated crop sent to a served model is a 400 (bad input), and any other detector failure
stops the stage with its cause."""
import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.faces import CropSettings
from serving.detector import Detector, decode_bytes
from tests.image_files import encode, truncated, upright


def _cut_jpeg(seed: int = 0) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 40, (128, 96, 3), dtype=np.uint8)
    return truncated(encode(Image.fromarray(np.asarray(upright(96, 128)) | noise), "JPEG"))


@pytest.mark.parametrize("switch", [False, True])
def test_decoding_leaves_pils_global_switch_as_the_process_set_it(monkeypatch, switch):
    """A host process (a server, a notebook) may set LOAD_TRUNCATED_IMAGES for its own reasons:
    decoding a cut photo keeps the rows that arrived and leaves the switch as it was."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", switch)
    dec = decode_bytes(_cut_jpeg())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is switch
    assert dec.img is not None and dec.error == "", dec
    if not switch:   # with the switch on, PIL itself reads the cut file without a word
        assert dec.note.startswith("partly decoded"), dec


def test_threads_decoding_cut_photos_never_let_a_cut_crop_through():
    """A server's threads at once: every cut photo partly decodes, every cut crop is refused, as
    the crop reader of the trainables (which reads without the switch) refuses it."""
    from serving.detector import CROPS
    from trainables.data import decode_crop
    photo, crop = _cut_jpeg(1), _cut_jpeg(2)
    wrong: list[str] = []

    def photos():
        for _ in range(150):
            if decode_bytes(photo).img is None:
                wrong.append("a cut photo was refused")

    def crops():
        for _ in range(150):
            if CROPS.data(crop).img is not None:
                wrong.append("a cut crop was accepted")
            try:
                decode_crop(io.BytesIO(crop), 32)
                wrong.append("decode_crop read a cut crop")
            except OSError:
                pass

    threads = [threading.Thread(target=f) for f in (photos, photos, crops, crops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, sorted(set(wrong))


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory):
    """A real ensemble model folder: one tiny member per head, as `ensemble` writes it."""
    from core.faces import Priors
    from serving.ensemble_model import write_ensemble
    from trainables.config import TrialConfig
    from trainables.models import build_model, save_model_file
    tmp = tmp_path_factory.mktemp("ens")
    members = []
    for head in ("mask", "gender", "age"):
        cfg = TrialConfig(head=head, model="test_efficientnet", img_size=32, epochs=1, batch_size=4)
        members.append((save_model_file(tmp / f"{head}.pt", build_model(cfg, pretrained=""), cfg), head))
    return write_ensemble(tmp / "ensemble", members, {"mask": [0], "gender": [1], "age": [2]}, vote_how="soft",
                          tta=(), offsets=None, batch_size=4, face=(CropSettings(size=32), Priors(None)))


def test_a_cut_crop_is_a_bad_request_naming_its_row(ensemble_folder):
    """Served, an MlflowException of invalid_parameter_value is a 400; an OSError would be a 500."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from serving.ensemble_model import IMAGE, EnsembleModel
    model = EnsembleModel(ensemble_folder)
    whole = encode(upright(32, 32), "JPEG")
    assert len(model.predict(pd.DataFrame({IMAGE: [whole, whole]}))) == 2
    with pytest.raises(MlflowException) as err:
        model.predict(pd.DataFrame({IMAGE: [whole, _cut_jpeg()]}))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "row 1" in str(err.value), err.value


def test_a_detector_failure_raises_instead_of_becoming_no_face():
    """Only "no face found" is None: an error inside MTCNN (here a network that cannot run, as a
    CUDA out-of-memory would) reaches the caller."""
    det = Detector(CropSettings())
    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 384, 3), dtype=np.uint8))
    assert det.detect([face]) == [None]   # noise: no face, a fallback

    def broken(*_):
        raise RuntimeError("CUDA out of memory (as the device would say it)")

    det.nets[0].forward = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        det.detect([face])
    with pytest.raises(RuntimeError, match="out of memory"):
        det.candidates(face)


def test_an_image_too_small_for_the_smallest_face_is_no_face():
    """MTCNN raises on an image smaller than its smallest face (an empty pyramid); the detector
    knows beforehand that no face fits and says "no face" without calling it."""
    det = Detector(CropSettings(min_face_size=160))
    assert det.detect([Image.new("RGB", (40, 40)), Image.new("RGB", (40, 40))]) == [None, None]
    assert det.candidates(Image.new("RGB", (40, 40))) == []


@pytest.mark.parametrize("bad", ["0.6,0.7", "0.6,0.7,1.5", "-0.1,0.7,0.7"])
def test_bad_thresholds_are_a_usage_error_before_anything_runs(tmp_path, capsys, bad):
    """Two thresholds made MTCNN's O-net raise on the first face, which became "no face"; one over
    1 finds nothing. Both are refused by the settings (exit 2), before a workspace is made."""
    from orchestrator.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["preprocess", "--data", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws"),
              f"--thresholds={bad}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "thresholds" in err and "three probabilities in [0, 1]" in err, err
    assert not (tmp_path / "ws").exists()
    with pytest.raises(ValueError, match="second_thresholds"):
        CropSettings(second_thresholds=(0.05, 0.05))
