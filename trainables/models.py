"""timm models and the one model-file format (state dict + the config that rebuilds it)."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .config import TrialConfig


def check_model_name(name: str) -> None:
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() "
                         f"(similar: {', '.join(close) or 'none'})")


def build_model(cfg: TrialConfig, *, pretrained: str | None = None) -> nn.Module:
    """A timm model with one output per class of the head(s).

    ``pretrained`` overrides ``cfg.pretrained``: "" none (loading a model file), "hub"
    (timm's download; needs internet) or a local weights file (its classifier is dropped).
    """
    from core.labels import num_outputs
    source = cfg.pretrained if pretrained is None else pretrained
    num_classes = num_outputs(cfg.head)   # a joint (all) model: every head's classes side by side
    if source in ("", "hub"):
        return timm.create_model(cfg.model, pretrained=source == "hub", num_classes=num_classes)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found; pass an existing file or '' for none")
    return timm.create_model(cfg.model, pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay={"file": str(path)})


def data_config(model: nn.Module, img_size: int) -> dict:
    """The model's own normalisation (mean, std) at our input size."""
    dc = timm.data.resolve_data_config({}, model=model)
    return {"mean": tuple(dc["mean"]), "std": tuple(dc["std"]), "img_size": img_size}


def save_model_file(path: Path | str, model: nn.Module, cfg: TrialConfig, **extra) -> Path:
    from core.atomic import write_bytes_atomic
    import io
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": cfg.to_dict(), **extra}, buf)
    write_bytes_atomic(buf.getvalue(), path)
    return Path(path)


def load_model_file(path: Path | str, map_location="cpu") -> tuple[nn.Module, TrialConfig]:
    """(model in eval mode, its config); the file's extra keys are in ``read_model_extra``."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    cfg = TrialConfig.from_dict(blob["config"])
    model = build_model(cfg, pretrained="")
    model.load_state_dict(blob["state_dict"])
    return model.eval(), cfg


def read_model_extra(path: Path | str) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in blob.items() if k not in ("state_dict", "config")}
