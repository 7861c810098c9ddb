"""Training data of one head: manifest rows + folds + a decoded crop cache.

Crops are decoded once into a uint8 memmap in the workspace (keyed by the crop files' names,
sizes and mtimes and the side), so every trial on a node shares the page cache and the loader
only augments.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from core.errors import DataError
from core.folds import FoldSpec, fold_file
from core.label_table import manifest_labels_hash
from core.labels import ALL, COMPETITION_OLD_AGE, age_group, get_head, target_heads
from core.manifest import check_crops, read_manifest
from core.provenance import pinned_folds_key, rows_hash
from core.workspace import Workspace

from .augment import eval_transform, train_transform
from .config import FULL_DATA, TrialConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadData:
    paths: np.ndarray    # manifest `path` of every usable training image
    images: np.ndarray   # [N, S, S, 3] uint8 (memmap)
    target: np.ndarray   # training label (age: the training boundary old_from); [N, 3] for all
    score: np.ndarray    # label scored by F1 (age: always the competition boundary); [N, 3] for all
    fold: np.ndarray     # person-level fold


def usable_train_rows(ws: Workspace) -> pd.DataFrame:
    """Training rows of the manifest that have a crop; the others are skipped with a warning."""
    man = read_manifest(ws.manifest)
    train = man[man["split"] == "train"]
    bad = train[train["error"] != ""]
    for row in bad.itertuples():
        log.warning("%s: skipping %s (no crop: %s)", ws.manifest, row.path, row.error)
    return train[train["error"] == ""].reset_index(drop=True)


def head_labels(rows: pd.DataFrame, head: str, old_from: int) -> tuple[np.ndarray, np.ndarray]:
    """(training target, scored label) of a head; they differ only for age.
    A joint target (``all``) gives [N, heads] arrays, one column per head in output order."""
    if head == ALL:
        pairs = [head_labels(rows, h.name, old_from) for h in target_heads(ALL)]
        return np.stack([t for t, _ in pairs], 1), np.stack([s for _, s in pairs], 1)
    h = get_head(head)
    if h.name == "age":
        ages = rows["age"].to_numpy()
        return age_group(ages, old_from), age_group(ages, COMPETITION_OLD_AGE)
    y = rows[h.column].to_numpy().astype(np.int64)
    return y, y


def read_folds(ws: Workspace, k: int, seed: int, key: str = "") -> pd.DataFrame:
    """The split ``key`` (a study's pinned one), or without a key the latest made for k, seed."""
    path = fold_file(ws.root, FoldSpec(k, seed), key or None)
    if not path.is_file():
        raise DataError(f"{path}: no fold assignment; run `python -m orchestrator folds --folds {k}` "
                        "(tune makes it before starting trials)")
    return pd.read_csv(path, dtype={"person": str})


def check_pinned(ws: Workspace, rows: pd.DataFrame, pins: dict) -> None:
    """The crop manifest still holds the crops and labels a trial's study pinned (a trial that
    Tune retries after the data was preprocessed again must not train on other data)."""
    now = {"crops": rows_hash(rows, ("path", "crop")), "labels": manifest_labels_hash(read_manifest(ws.manifest))}
    diff = [f"{k} {pins[k]} -> {v}" for k, v in now.items() if pins.get(k) and pins[k] != v]
    if diff:
        raise DataError(f"{ws.manifest}: the crop manifest changed since this trial's study started "
                        f"({'; '.join(diff)}); the trial stops rather than train on other data: start a new study")


def load_head_data(cfg: TrialConfig, ws: Workspace, *, pins: dict | None = None) -> HeadData:
    """The head's training data; with a study's ``pins`` (orchestrator.study.pins) on the study's own
    split, after checking that the manifest holds its crops and labels (else the latest split)."""
    rows = usable_train_rows(ws)
    folds_key = pinned_folds_key(pins or {})
    if pins:
        check_pinned(ws, rows, pins)
    folds = read_folds(ws, cfg.folds, cfg.fold_seed, folds_key)
    rows = rows.merge(folds[["path", "fold"]], on="path", how="left")
    if rows["fold"].isna().any():
        missing = rows.loc[rows["fold"].isna(), "path"].iloc[0]
        raise DataError(f"{fold_file(ws.root, FoldSpec(cfg.folds, cfg.fold_seed), folds_key or None)}: no fold "
                        f"for {missing}; the data changed since the folds were made: start a new study")
    target, score = head_labels(rows, cfg.head, cfg.old_from)
    images = crop_cache(ws, rows["crop"].tolist(), cfg.img_size, checked=bool(pins))   # a study checked them
    return HeadData(rows["path"].to_numpy(), images, target.astype(np.int64),
                    score.astype(np.int64), rows["fold"].to_numpy().astype(int))


def decode_crop(path, size: int) -> np.ndarray:
    """A crop file (or a file-like object holding its bytes) as size x size RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))


def crops_key(ws: Workspace, crops: list[str], size: int) -> str:
    """What the decoded crops are made from: every crop file's name, size and mtime (a crop
    rewritten under its old name is a new entry) and the decoded side."""
    h = hashlib.sha1(f"{size}\n".encode())
    for c in crops:
        st = (ws.crops / c).stat()
        h.update(f"{c}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _checked_marker(ws: Workspace, crops: list[str], size: int) -> Path:
    names = hashlib.sha1("\n".join(crops).encode()).hexdigest()[:16]
    return ws.root / "cache" / f"checked_{size}_{names}"


def crop_cache(ws: Workspace, crops: list[str], size: int, *, checked: bool = False) -> np.ndarray:
    """The crops decoded at ``size``×``size`` into one memmap, built once per content (under a
    file lock); an unchanged crop set is never decoded again.

    ``checked``: a trial, whose study's driver already checked this crop set (crop_cache without
    ``checked``, before Ray starts) and left a marker naming the memmap; it opens that memmap
    without reading every crop file again: on shared storage (NFS/EFS) each of the thousands of
    crops costs a round trip, for every fold model of every trial."""
    marker = _checked_marker(ws, crops, size)
    if checked and marker.is_file():
        path = ws.root / "cache" / f"crops_{size}_{marker.read_text().strip()}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r")
    check_crops(ws.crops, crops)   # a crop deleted or cut after preprocessing: say so, not a trial's traceback
    key = crops_key(ws, crops, size)
    path = ws.root / "cache" / f"crops_{size}_{key}.npy"
    shape = (len(crops), size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # concurrent trials: one decodes, the others wait
        if not path.is_file():
            tmp = path.with_name(path.name + ".tmp")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for i, c in enumerate(crops):
                arr[i] = decode_crop(ws.crops / c, size)
            arr.flush()
            del arr
            tmp.rename(path)
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(key)
        tmp.replace(marker)
    return np.load(path, mmap_mode="r")

class CropDataset(Dataset):
    def __init__(self, data: HeadData, index: np.ndarray, transform):
        self.data, self.index, self.transform = data, index, transform

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, tuple):   # (row, augmentation seed) from SeededShuffle
            i, seed = i
            self.transform.set_random_seed(seed)
        j = self.index[i]
        x = self.transform(image=np.asarray(self.data.images[j]))["image"]
        return x, torch.as_tensor(self.data.target[j]), torch.as_tensor(self.data.score[j])


def split_index(data: HeadData, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows); FULL_DATA trains on everything."""
    if fold == FULL_DATA:
        return np.arange(len(data.fold)), np.array([], dtype=int)
    return np.flatnonzero(data.fold != fold), np.flatnonzero(data.fold == fold)


class SeededShuffle(Sampler):
    """A shuffle that hands each sample its augmentation seed too, both drawn from ``generator``:
    a sample then looks the same whichever DataLoader worker process (each holds its own copy of
    the transform and its random stream) or how many of them draw it, so `reproduce` without
    workers sees what the trial saw."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        # from the epoch's seed (what ``generator.manual_seed`` last set), not from the generator's
        # state: the DataLoader draws its workers' base seed from it once per iterator, which is
        # every epoch without workers but only the first with persistent ones
        gen = torch.Generator().manual_seed(self.generator.initial_seed())
        order = torch.randperm(self.n, generator=gen).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=gen).tolist()
        return iter(zip(order, seeds))


def trial_cpus() -> float:
    """The CPUs Ray gave this process (1 outside Ray: plain loops load in the training process)."""
    import sys
    ray = sys.modules.get("ray")
    # a driver that started Ray (reproduce, a benchmark) is no trial: Ray answers only its workers
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 1.0
    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))


def loader_workers(asked: int, cpus: float) -> int:
    """DataLoader worker processes: ``asked`` if >= 0; auto (-1): the trial's CPUs but the one the
    training loop runs on, so decoding and augmenting the next batches overlaps the compute."""
    return asked if asked >= 0 else max(0, int(cpus) - 1)


def _system_temp(_worker: int) -> None:
    """A DataLoader worker's temp folder is the system's, not its trial's scratch folder
    (trainables/trainable.py): a worker hands each batch over through a Unix socket it makes
    in its temp folder, and a trial folder's path is often longer than a socket's may be (108
    bytes): the socket failed and the trial waited for its batch for ever."""
    import tempfile
    tempfile.tempdir = None


def build_loaders(cfg: TrialConfig, data: HeadData, mean, std, *, pin_memory: bool = False,
                  cpus: float | None = None) -> tuple[DataLoader, DataLoader | None]:
    """(train loader, validation loader or None for full-data training); ``cpus``: the trial's
    (None: what Ray gave this process), for cfg.num_workers -1.

    The train loader draws its shuffle and augmentation seeds from ``loader.generator``; seed it
    per epoch (``seed + epoch``) so a trial resumed from a checkpoint sees the same batches.
    """
    tr, va = split_index(data, cfg.fold)
    workers = loader_workers(cfg.num_workers, trial_cpus() if cpus is None else cpus)
    common = dict(batch_size=cfg.batch_size, num_workers=workers, pin_memory=pin_memory,
                  worker_init_fn=_system_temp if workers else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = DataLoader(CropDataset(data, tr, train_transform(cfg.head, cfg.strength, cfg.img_size, mean, std, seed=cfg.seed)),
                       sampler=SeededShuffle(len(tr), gen), drop_last=len(tr) > cfg.batch_size,
                       generator=gen, persistent_workers=workers > 0, **common)
    if not len(va):
        return train, None
    # validation runs a few times per trial: idle persistent workers would hold memory between
    val = DataLoader(CropDataset(data, va, eval_transform(cfg.img_size, mean, std)), shuffle=False, **common)
    return train, val
