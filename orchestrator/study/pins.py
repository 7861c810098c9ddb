"""A study is pinned to its inputs: its label table, fold split, crop set, settings and code.

When a study starts, ``WS/studies/<study>.json`` records their hashes; every later phase,
resume or retrain of that study compares the inputs at hand with them and stops, saying what
changed and which new study name to use, instead of continuing trials on other data (a
resumed trial's validation fold would hold persons it trained on). Other code only warns: a
resume after a fix is what resuming is for. Every trial logs the same
hashes as MLflow tags (results.run_schema.pin_tags), which `reproduce` checks.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from core.atomic import write_text_atomic
from core.errors import DataError
from core.folds import FoldSpec, fold_file, folds_key
from core.provenance import code_version, dict_hash, pinned_folds_key, rows_hash
from core.workspace import Workspace

log = logging.getLogger(__name__)

# what defines the models of a study; the schedule (epochs, validated epochs, deadlines) is left
# out: `run --budget` sizes it anew on every run, and a resumed trial keeps its own from Tune
SETTINGS = ("head", "folds", "fold_seed", "model", "pretrained", "img_size", "batch_size", "optimizer",
            "weight_decay", "class_weights", "seed", "precision", "search_folds")
# settings added after studies were first recorded, with the value every older study trained with:
# they count only when set to another, so an older study's record still matches its resume
ADDED_SETTINGS = {"age_head": "softmax", "freeze": 0}


@dataclass(frozen=True)
class Pins:
    labels: str      # the label table after corrections (core.label_table.labels_hash)
    folds: str       # the fold file's key (core.folds.folds_key) with its spec
    crops: str       # the training crops (content-addressed names, so their content)
    settings: str    # the study's model settings (SETTINGS of its base config, search trials)
    code: str        # git commit (+ a hash of uncommitted changes) or package version

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def folds_key(self) -> str:
        return pinned_folds_key(self.as_dict())


def study_pins(labels: str, table: pd.DataFrame, manifest_train: pd.DataFrame, spec: FoldSpec,
               settings: dict) -> Pins:
    """``labels``/``table``: the label table the study trains on and its hash
    (core.label_table.current_labels); ``manifest_train``: the usable training rows of the crop
    manifest (path, crop); ``settings``: its base config dict plus the search size."""
    return Pins(labels=labels,
                folds=f"{fold_file('.', spec).stem}-{folds_key(table)}",
                crops=rows_hash(manifest_train, ("path", "crop")),
                settings=dict_hash({k: v for k, v in settings.items() if k in SETTINGS or k == "num_samples"
                                    or (k in ADDED_SETTINGS and v != ADDED_SETTINGS[k])}),
                code=code_version())


def pin_file(ws: Workspace, study: str) -> Path:
    return ws.root / "studies" / f"{study}.json"


def read_pins(ws: Workspace, study: str) -> Pins | None:
    path = pin_file(ws, study)
    if not path.is_file():
        return None
    try:
        return Pins(**json.loads(path.read_text())["pins"])
    except (ValueError, KeyError, TypeError) as exc:   # edited by hand: not JSON, keys renamed or missing
        raise DataError(f"{path}: not the study's record of its inputs ({type(exc).__name__}: {exc}); it holds "
                        f"{{\"study\": ..., \"pins\": {{{', '.join(map(repr, Pins.__dataclass_fields__))}}}}} as "
                        f"the study wrote it: restore it from a backup, or start a new study (--study "
                        f"{free_name(ws, study)}) so no trial continues on inputs nobody can check") from exc


def free_name(ws: Workspace, study: str) -> str:
    """``study-2``, ``study-3``, ...: the first name no study of this workspace has."""
    base, n = study, 2
    while pin_file(ws, f"{base}-{n}").is_file():
        n += 1
    return f"{base}-{n}"


# the code is recorded but does not stop a study: resuming after a fix (a crash, a logging bug)
# is what a resume is for; the change is logged, and `reproduce` notes it
WARN_ONLY = ("code",)


def changes(old: dict, new: dict) -> list[str]:
    return [f"{k} {a} -> {b}" for k, a in old.items() if k in new and (b := new[k]) != a]


def _refuse_or_warn(ws: Workspace, study: str, old: dict, new: dict, why: str) -> None:
    code = changes({k: v for k, v in old.items() if k in WARN_ONLY}, new)
    if code:
        log.warning("study %r goes on with other code than it started with (%s)", study, "; ".join(code))
    diff = changes({k: v for k, v in old.items() if k not in WARN_ONLY}, new)
    if diff:
        raise DataError(f"study {study!r} was made from other inputs than the data at hand "
                        f"({pin_file(ws, study)}): {'; '.join(diff)}. {why}; start a new study instead: "
                        f"--study {free_name(ws, study)} (`run`: a new --study prefix), or restore the inputs "
                        "it was made from")


def pin_study(ws: Workspace, study: str, pins: Pins, *, what: str = "resume") -> Pins:
    """Record a new study's pins, or check a known study's: other inputs stop with an error
    naming what changed and a free study name. Returns the pins the trials log: the inputs at
    hand (equal to the recorded ones, but for the code, which may have changed since)."""
    old = read_pins(ws, study)
    if old is None:
        write_text_atomic(json.dumps({"study": study, "pins": pins.as_dict()}, indent=1), pin_file(ws, study))
        return pins
    _refuse_or_warn(ws, study, old.as_dict(), pins.as_dict(), f"A {what} would mix them")
    return pins




def check_study_data(ws: Workspace, study: str, labels: str, manifest_train: pd.DataFrame) -> dict:
    """A retrain trains the study's config on all data: the labels, crops and code must be the
    study's. Returns the pins to log: the study's, with the code at hand ({} for a study made
    before pins were recorded)."""
    old = read_pins(ws, study)
    if old is None:
        return {}
    now = {"labels": labels, "crops": rows_hash(manifest_train, ("path", "crop")),
           "code": code_version()}
    _refuse_or_warn(ws, study, old.as_dict(), now, "Its full-data model would not be the model its folds validated")
    return old.as_dict() | {"code": now["code"]}
