"""The whole ensemble as one MLflow pyfunc model: photos (or face crops) in, the 18 classes out.

What `ensemble` built travels in one folder (the model's data): ``ensemble.json`` (members and
the heads each votes for, vote, TTA, calibration offsets, the class map, and the crop settings
with the fallback prior of the training crops) and ``members/N.pt``, each member's model file
(state dict + config). As for a trial's model (trainables.mlflow_model) the MLmodel names this
module as its loader, so loading reads JSON and tensors (torch.load(weights_only=True)) and
runs no pickle from the store; this package's code travels with the model (MLflow's
``code_paths``), so it loads where the package is not installed.

Input: a DataFrame with a column ``photo`` (whole photos, JPEG/PNG bytes: the model crops the
face as `preprocess` does) and/or ``image`` (face crops as `preprocess` writes them); a row
uses its photo where it has one. Over REST (`mlflow models serve`) the bytes go as base64 text
(``{"dataframe_split": {"columns": ["photo"], "data": [["/9j/4AAQ..."]]}}``). Output per row:
``class`` (0..17, the submission's ``ans``), ``mask``, ``gender``, ``age`` (head classes),
``label`` (e.g. ``wear/male/<30``) and ``face``: how the crop was found (detect, weak_detect,
global_prior, centre; ``given`` for a crop sent in ``image``).
"""
from __future__ import annotations

import importlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from core.faces import CropSettings, Priors
from core.labels import class_names, decode, output_slices
from results.voting import joint_log_probs, predict_classes, vote
from trainables.loop import device_of
from trainables.mlflow_model import IMAGE, RUNTIME, column_bytes, example_crop, requirements
from trainables.models import load_model_file
from trainables.predict import predict_probs

from .detector import CROPS
from .photo_crop import PhotoCropper

LOADER = __name__
SPEC = "ensemble.json"
PHOTO = "photo"
GIVEN = "given"      # ``face`` of a row whose crop the caller sent
PACKAGES = ("core", "trainables", "results", "serving")   # the code_paths: this package and the layers below it


def write_ensemble(folder: Path, members: list[tuple[Path, str]], voters: dict[str, list[int]], *,
                   vote_how: str, tta: tuple[str, ...], offsets: np.ndarray | None, batch_size: int,
                   face: tuple[CropSettings, Priors] | None = None) -> Path:
    """The model's data folder. ``members``: (model file, what it predicts) in vote order;
    ``voters``: head -> indices of the members that vote for it; ``face``: the crop settings and
    the prior of the training crops (None: the model takes crops only)."""
    (folder / "members").mkdir(parents=True, exist_ok=True)
    for i, (path, _) in enumerate(members):
        shutil.copyfile(path, folder / "members" / f"{i}.pt")
    spec = {"members": [{"file": f"members/{i}.pt", "target": t} for i, (_, t) in enumerate(members)],
            "voters": voters, "vote": vote_how, "tta": list(tta), "batch_size": batch_size,
            "offsets": None if offsets is None else [float(x) for x in offsets],
            "classes": class_names(), "face": None if face is None else _face_spec(*face)}
    (folder / SPEC).write_text(json.dumps(spec, indent=1))
    return folder


def _face_spec(settings: CropSettings, prior: Priors) -> dict:
    box = None if prior.global_box is None else [float(v) for v in prior.global_box]
    return {"settings": settings.as_dict(), "prior": box}


class EnsembleModel:
    def __init__(self, folder: Path):
        self.spec = json.loads((folder / SPEC).read_text())
        self.members = [load_model_file(folder / m["file"]) for m in self.spec["members"]]
        self._cropper = None   # MTCNN is built with the first photo: callers with crops never pay for it
        self._lock = threading.Lock()   # a server predicts in threads: one MTCNN

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            crops, faces = self.crops(model_input)
        except ValueError as exc:   # bad input (PhotoError too), not a failure of the model
            from mlflow.exceptions import MlflowException  # heavy; served, it becomes a 400 with this message
            raise MlflowException.invalid_parameter_value(str(exc)) from exc
        out = self.answer(crops)
        out["face"] = faces
        return out

    def crops(self, model_input) -> tuple[list[bytes], list[str]]:
        """Each row's face crop and how it was found: a photo is cropped, a crop is kept."""
        if not isinstance(model_input, pd.DataFrame) or not {PHOTO, IMAGE} & set(model_input.columns):
            raise ValueError(f"input must be a DataFrame with a column {PHOTO!r} (photos) or {IMAGE!r} "
                             "(face crops) of JPEG/PNG bytes (base64 text over REST)")
        n = len(model_input)
        photos = column_bytes(model_input, PHOTO) if PHOTO in model_input else [None] * n
        crops = column_bytes(model_input, IMAGE) if IMAGE in model_input else [None] * n
        empty = [str(i) for i in range(n) if photos[i] is None and crops[i] is None]
        if empty:
            raise ValueError(f"row(s) {', '.join(empty)}: no {PHOTO!r} and no {IMAGE!r}; send a photo or a face crop")
        errors = {i: CROPS.data(c).error if c else "empty crop" for i, c in enumerate(crops) if photos[i] is None}
        bad = [f"row {i}: {IMAGE}: {e}" for i, e in errors.items() if e]
        if bad:
            raise ValueError("; ".join(bad) + "; send JPEG or PNG face crops")
        rows = [i for i in range(n) if photos[i] is not None]
        faces = [GIVEN] * n
        for i, fc in zip(rows, self.cropper().crop([photos[i] for i in rows], rows) if rows else []):
            crops[i], faces[i] = fc.crop, fc.method
        return crops, faces

    def cropper(self) -> PhotoCropper:
        face = self.spec.get("face")
        if not face:
            raise ValueError(f"this model was logged without the crop settings of its training crops, so "
                             f"it cannot crop photos; send face crops in column {IMAGE!r}")
        with self._lock:
            if self._cropper is None:
                prior = Priors(None if face["prior"] is None else np.asarray(face["prior"]))
                # MTCNN runs where the members predict
                self._cropper = PhotoCropper(CropSettings(**face["settings"]), prior, str(device_of()))
        return self._cropper

    def answer(self, crops: list[bytes]) -> pd.DataFrame:
        """The members' vote on face crops: the 18 classes and the three heads."""
        s = self.spec
        probs = [predict_probs(model, cfg, crops, tta=tuple(s["tta"]), batch_size=s["batch_size"])
                 for model, cfg in self.members]
        heads = {h: vote([probs[i][:, output_slices(s["members"][i]["target"])[h]] for i in idx], s["vote"])
                 for h, idx in s["voters"].items()}
        offsets = None if s["offsets"] is None else np.asarray(s["offsets"])
        classes = predict_classes(joint_log_probs(heads), offsets)
        mask, gender, age = decode(classes)
        return pd.DataFrame({"class": classes.astype(np.int64), "mask": mask, "gender": gender, "age": age,
                             "label": [s["classes"][c] for c in classes]})


def _load_pyfunc(data_path: str, model_config=None) -> EnsembleModel:
    return EnsembleModel(Path(data_path))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    inputs = [ColSpec("binary", PHOTO, required=False), ColSpec("binary", IMAGE, required=False)]
    outputs = [ColSpec("long", c) for c in ("class", "mask", "gender", "age")]
    outputs += [ColSpec("string", "label"), ColSpec("string", "face")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def code_paths() -> list[str]:
    """This package's folders: the logged model carries the code that loads it."""
    return [str(Path(importlib.import_module(p).__file__).parent) for p in PACKAGES]


def pyfunc_spec(photo_size: int = 96) -> dict:
    """What ``Model.log`` gets: the input example is a small grey photo (no face: the prior box)."""
    pins = requirements((*RUNTIME, "facenet-pytorch", "scikit-learn", "numpy"))
    return {"loader_module": LOADER, "signature": signature(), "pip_requirements": pins,
            "code_paths": code_paths(), "input_example": pd.DataFrame({PHOTO: [example_crop(photo_size)]})}
