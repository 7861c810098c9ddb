"""timm models and the one model-file format (state dict + the config that rebuilds it)."""
from __future__ import annotations

import io
from pathlib import Path

import timm
import torch
from torch import nn

from core.atomic import write_bytes_atomic
from core.labels import num_outputs

from .config import TrialConfig
from .pretrained import HUB, PretrainedError, check_source, is_none, ways_out


def build_model(cfg: TrialConfig, *, pretrained: str | None = None) -> nn.Module:
    """A timm model with one output per class of the head(s).

    ``pretrained`` overrides ``cfg.pretrained``: "none" (or "": loading a model file), "hub"
    (timm's download; needs internet or its cache) or a local weights file (its classifier
    is dropped; a file of another architecture is a PretrainedError).
    """
    source = cfg.pretrained if pretrained is None else pretrained
    num_classes = num_outputs(cfg.head)   # a joint (all) model: every head's classes side by side
    if is_none(source) or source == HUB:
        return timm.create_model(cfg.model, pretrained=source == HUB, num_classes=num_classes)
    check_source(cfg.model, source)
    check_fits(timm.create_model(cfg.model, num_classes=num_classes), Path(source))
    return timm.create_model(cfg.model, pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay={"file": str(source)})


def check_fits(model: nn.Module, path: Path) -> None:
    """Every backbone tensor of ``model`` is in the weights file, with its shape. timm loads a
    file non-strictly once the classifier differs (always, for our heads), so a file of another
    architecture would load nothing, silently; here it is a PretrainedError."""
    from timm.models import load_state_dict
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    try:
        theirs = load_state_dict(str(path))
    except Exception as exc:   # not a torch / safetensors file at all
        raise PretrainedError(f"--pretrained {path}: not a weights file ({exc}); {ways_out(name)}") from exc
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    missing = [k for k in ours if k not in theirs]
    shape = [k for k in ours if k in theirs and theirs[k].shape != ours[k].shape]
    if missing or shape:
        raise PretrainedError(
            f"--pretrained {path}: the file does not hold weights of timm model {name!r}: {len(missing)} of its "
            f"{len(ours)} backbone tensors missing (e.g. {', '.join(missing[:2]) or '-'}), {len(shape)} of another "
            f"shape (e.g. {', '.join(shape[:2]) or '-'}); it was saved from another architecture; {ways_out(name)}")


def data_config(model: nn.Module, img_size: int) -> dict:
    """The model's own normalisation (mean, std) at our input size."""
    dc = timm.data.resolve_data_config({}, model=model)
    return {"mean": tuple(dc["mean"]), "std": tuple(dc["std"]), "img_size": img_size}


def save_model_file(path: Path | str, model: nn.Module, cfg: TrialConfig, **extra) -> Path:
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": cfg.to_dict(), **extra}, buf)
    write_bytes_atomic(buf.getvalue(), path)
    return Path(path)


def load_model_file(path: Path | str, map_location="cpu") -> tuple[nn.Module, TrialConfig]:
    """(model in eval mode, its config); the file's extra keys are in ``read_model_extra``."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    cfg = TrialConfig.from_dict(blob["config"])
    model = build_model(cfg, pretrained="none")
    model.load_state_dict(blob["state_dict"])
    return model.eval(), cfg


def read_model_extra(path: Path | str) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in blob.items() if k not in ("state_dict", "config")}
