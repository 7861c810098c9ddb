"""A trained model as an MLflow pyfunc model that loads without unpickling anything.

The logged model's MLmodel names this module as its loader (pyfunc ``loader_module``); its
only data is the model file (state dict + the TrialConfig that rebuilds it), read with
``torch.load(weights_only=True)``. So loading runs this package's own code on tensors and plain
values from the store: no code and no pickle from a store the user may not control
(MLflow's pytorch flavour pickles the whole module and a PythonModel is cloudpickled; either
runs what the pickle says when loaded). The price: loading needs this package installed.

Input: a DataFrame with a column ``image`` holding face crops as encoded bytes (JPEG/PNG, as
`preprocess` writes them). Output, one row per image: ``p0..p{C-1}`` (softmax per head,
hflip TTA, as the ensemble predicts) and one column per head with its class.
"""
from __future__ import annotations

import io
from importlib import metadata

import numpy as np
import pandas as pd

from core.labels import num_outputs, output_slices

from .models import load_model_file
from .predict import predict_probs

LOADER = __name__
IMAGE = "image"
TTA = ("hflip",)


class CropModel:
    """What ``mlflow.pyfunc.load_model`` wraps: predict(DataFrame with ``image``) -> probabilities."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        p = predict_probs(self.model, self.cfg, image_bytes(model_input), tta=TTA)
        return probability_frame(p, self.cfg.head)


def _load_pyfunc(data_path: str, model_config=None) -> CropModel:
    """MLflow's entry point (``loader_module``): ``data_path`` is the model file."""
    return CropModel(*load_model_file(data_path))


def image_bytes(model_input) -> list[bytes]:
    """The ``image`` column as bytes."""
    if not isinstance(model_input, pd.DataFrame) or IMAGE not in model_input.columns:
        raise ValueError(f"input must be a DataFrame with a column {IMAGE!r} of encoded face crops (JPEG/PNG bytes)")
    return [b"" if v is None else v for v in column_bytes(model_input, IMAGE)]


def column_bytes(model_input: pd.DataFrame, column: str) -> list[bytes | None]:
    """A column of encoded images as bytes, None where a row has none. MLflow's REST serving
    decodes a binary column's base64 text; a caller in Python may still pass that text."""
    out = []
    for v in model_input[column]:
        if isinstance(v, str):
            import base64
            v = base64.b64decode(v)
        out.append(None if v is None or (isinstance(v, float) and v != v) else bytes(v))   # NaN: a gap
    return out


def probability_frame(p: np.ndarray, head: str) -> pd.DataFrame:
    df = pd.DataFrame(p.astype(np.float32), columns=[f"p{k}" for k in range(p.shape[1])])
    for h, cols in output_slices(head).items():
        df[h] = p[:, cols].argmax(1).astype(np.int64)
    return df


def example_crop(size: int) -> bytes:
    """A small grey JPEG: the input example MLflow stores (and shows) with the model."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buf, format="JPEG")
    return buf.getvalue()


def signature(head: str):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    outputs = [ColSpec("float", f"p{k}") for k in range(num_outputs(head))]
    outputs += [ColSpec("long", h) for h in output_slices(head)]
    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE)]), outputs=Schema(outputs))


RUNTIME = ("torch", "timm", "albumentations", "pillow", "pandas", "mlflow")


def requirements(dists: tuple[str, ...] = ("mask-orchestrator", *RUNTIME)) -> list[str]:
    """Pinned to what trained the model (no inference: MLflow would load the model in a subprocess)."""
    out = []
    for dist in dists:
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pass
    return out


def pyfunc_spec(cfg) -> dict:
    """What ``TrialLogger.log_model`` hands to MLflow for a model of ``cfg``."""
    return {"loader_module": LOADER, "signature": signature(cfg.head),
            "input_example": pd.DataFrame({IMAGE: [example_crop(min(cfg.img_size, 64))]}),
            "pip_requirements": requirements()}
