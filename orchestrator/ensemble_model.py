"""The whole ensemble as one MLflow pyfunc model: face crops in, the 18 classes out.

What `ensemble` built travels in one folder (the model's data): ``ensemble.json`` (members and
the heads each votes for, vote, TTA, calibration offsets, the class map) and ``members/N.pt``,
each member's model file (state dict + config). As for a trial's model
(trainables.mlflow_model) the MLmodel names this module as its loader, so loading reads JSON
and tensors (torch.load(weights_only=True)) and runs no code or pickle from the store.

Input: a DataFrame with column ``image`` of face crops (JPEG/PNG bytes, as `preprocess` writes
them). Output per image: ``class`` (0..17, the submission's ``ans``), ``mask``, ``gender``,
``age`` (head classes) and ``label`` (e.g. ``wear/male/<30``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from core.labels import class_names, decode, output_slices
from results.voting import joint_log_probs, predict_classes, vote
from trainables.mlflow_model import IMAGE, example_crop, image_bytes, requirements
from trainables.models import load_model_file
from trainables.predict import predict_probs

LOADER = __name__
SPEC = "ensemble.json"


def write_ensemble(folder: Path, members: list[tuple[Path, str]], voters: dict[str, list[int]], *,
                   vote_how: str, tta: tuple[str, ...], offsets: np.ndarray | None, batch_size: int) -> Path:
    """The model's data folder. ``members``: (model file, what it predicts) in vote order;
    ``voters``: head -> indices of the members that vote for it."""
    (folder / "members").mkdir(parents=True, exist_ok=True)
    for i, (path, _) in enumerate(members):
        shutil.copyfile(path, folder / "members" / f"{i}.pt")
    spec = {"members": [{"file": f"members/{i}.pt", "target": t} for i, (_, t) in enumerate(members)],
            "voters": voters, "vote": vote_how, "tta": list(tta), "batch_size": batch_size,
            "offsets": None if offsets is None else [float(x) for x in offsets],
            "classes": class_names()}
    (folder / SPEC).write_text(json.dumps(spec, indent=1))
    return folder


class EnsembleModel:
    def __init__(self, folder: Path):
        self.spec = json.loads((folder / SPEC).read_text())
        self.members = [load_model_file(folder / m["file"]) for m in self.spec["members"]]

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        crops = image_bytes(model_input)
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
    outputs = [ColSpec("long", c) for c in ("class", "mask", "gender", "age")] + [ColSpec("string", "label")]
    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE)]), outputs=Schema(outputs))


def pyfunc_spec(img_size: int) -> dict:
    return {"loader_module": LOADER, "signature": signature(), "pip_requirements": requirements(),
            "input_example": pd.DataFrame({IMAGE: [example_crop(min(img_size, 64))]})}
