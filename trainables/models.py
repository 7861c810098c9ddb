"""timm models and the one model-file format (state dict + the config that rebuilds it)."""
from __future__ import annotations

import io
from pathlib import Path

import timm
import torch
from torch import nn

from core.atomic import write_bytes_atomic
from core.labels import num_outputs, output_slices

from .config import TrialConfig
from .freeze import freeze
from .ordinal_head import with_ordinal_head
from .pretrained import HUB, PretrainedError, is_none, ways_out, weights_path
from .weights import WeightsError, map_by_order, read_state_dict, to_timm_layout


def build_model(cfg: TrialConfig, *, pretrained: str | None = None) -> nn.Module:
    """A timm model with one output per class of the head(s).

    ``pretrained`` overrides ``cfg.pretrained``: "none" (or "": loading a model file), "hub"
    (timm's download; needs internet or its cache), an installed weights package ("lite0") or a
    local weights file, in timm's layout or another library's (trainables/weights.py). The
    classifier is never loaded (ours has the heads' classes); every backbone tensor is, or it is
    a PretrainedError naming the first one that does not fit.
    """
    source = cfg.pretrained if pretrained is None else pretrained
    num_classes = num_outputs(cfg.head)   # a joint (all) model: every head's classes side by side
    if is_none(source) or source == HUB:
        model = timm.create_model(cfg.model, pretrained=source == HUB, num_classes=num_classes)
    else:
        model = timm.create_model(cfg.model, num_classes=num_classes)
        backbone = pretrained_backbone(cfg.model, source)
        res = model.load_state_dict(backbone, strict=False)
        assert not res.unexpected_keys and set(res.missing_keys) <= set(classifier_keys(model)), res   # pretrained_backbone's promise
    if cfg.age_head == "ordinal":   # after loading: the classifier is never loaded (validate: the target has age)
        model = with_ordinal_head(model, output_slices(cfg.head)["age"])
    return freeze(model, cfg.freeze)


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the model's classifier (timm's pretrained_cfg names its modules)."""
    heads = model.pretrained_cfg.get("classifier") or ()
    return tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))


def classifier_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.startswith(classifier_prefixes(model))]


def write_timm_weights(model_name: str, source: str, out: Path | str) -> Path:
    """``source``'s weights in timm ``model_name``'s layout, classifier included, as a safetensors
    file that ``--pretrained FILE`` (or ``timm.create_model(..., pretrained_cfg_overlay={"file":
    FILE})``) loads by name: for a machine where the package cannot be installed."""
    from safetensors.torch import save_file   # only this export writes safetensors
    mapped = timm_weights(model_name, source, classifier=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in mapped.items()}, str(out), metadata={"timm_model": model_name,
                                                                                  "source": str(source)})
    return Path(out)


def pretrained_backbone(model_name: str, source: str) -> dict[str, torch.Tensor]:
    """The backbone tensors (classifier left out) of ``source`` in timm ``model_name``'s layout."""
    return timm_weights(model_name, source, classifier=False)


def timm_weights(model_name: str, source: str, *, classifier: bool) -> dict[str, torch.Tensor]:
    """``source``'s tensors in timm ``model_name``'s layout, its classifier kept or left out.

    A file in timm's names is matched by name: every tensor present with its shape, none left
    over (left out, its classifier may have any class count). A file in another layout is matched
    by order against the architecture with its own classifier (ImageNet's 1,000 classes, as the
    packages ship): the same count, every shape equal."""
    path = weights_path(model_name, source)
    reference = timm.create_model(model_name)
    ours, head = reference.state_dict(), classifier_prefixes(reference)
    keep = (lambda k: True) if classifier else (lambda k: not k.startswith(head))
    what = f"--pretrained {source}" + (f" ({path})" if str(path) != source else "")
    try:
        theirs = read_state_dict(path)
        if all(k in ours or k.startswith(head) for k in theirs):   # timm's names
            mapped = to_timm_layout({k: v for k, v in theirs.items() if keep(k)},
                                    {k: v for k, v in ours.items() if keep(k)}, what=what)
        elif Path(path).suffix == ".safetensors":   # its tensors are stored sorted by dtype and name
            raise WeightsError(f"{what}: a .safetensors file keeps no tensor order, so only timm's names can be "
                               "matched and these are not timm's (first: "
                               f"{next(k for k in theirs if k not in ours and not k.startswith(head))!r}); save the "
                               "state dict with torch.save, or in timm's names")
        else:
            mapped = {k: v for k, v in map_by_order(theirs, ours, what=what).items() if keep(k)}
    except WeightsError as exc:
        raise PretrainedError(f"{exc}: the file does not hold weights of timm model {model_name!r} (saved from "
                              f"another architecture?); {ways_out(model_name)}") from exc
    return mapped


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
