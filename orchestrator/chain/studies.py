"""Which studies a `run` trains and which vote for each head, decided before anything trains.

* **A changed label table starts the next study.** A study's trials all train on one label
  table (core/label_table.py). When train.csv or the corrections changed since the studies of
  ``--study run`` were trained (the audit's loop: `run --corrections FILE`), `run` trains the
  next free name, ``run-2`` (then ``run-3``, ...), and says so; the old studies stay in MLflow
  for comparison. A rerun with the same labels finds its own study again.
* **A head trained on a model of its own votes with it.** `run --head-backbone gender=resnet10t-64`
  trains the joint study ``run-all`` and a gender study ``run-gender``; gender votes with
  ``run-gender``, mask and age with the joint model.
* **Every head votes with a study trained on these labels.** `run --per-head --heads age`
  trains the age study only; mask and gender vote with the run's earlier studies of the same
  name (``run-mask``, else the joint ``run-all``), which must hold finished cv models (and
  full-data models when they vote) trained on the current labels. Otherwise the run stops
  before training, naming what is missing and the command that makes it.
"""
from __future__ import annotations

import json
import logging

import pandas as pd

from core.errors import DataError
from core.labels import ALL, HEADS, output_slices
from results.tracking import find_runs
from trainables.config import TrialConfig
from trainables.pretrained import HUB, is_none
from trainables.weights import SOURCES

log = logging.getLogger(__name__)


def _labels_of(runs: pd.DataFrame) -> set[str]:
    if runs.empty or "tags.labels" not in runs:
        return set()
    return set(runs["tags.labels"].dropna()) - {""}


def study_prefix(uri: str, prefix: str, targets: tuple[str, ...], labels: str) -> str:
    """``prefix``, or the first of ``prefix-2``, ``prefix-3``, ... whose studies hold no run
    trained on another label table than ``labels``."""
    for n in range(1, 1000):
        name = prefix if n == 1 else f"{prefix}-{n}"
        other = set().union(*(_labels_of(find_runs(uri, study=f"{name}-{t}")) for t in targets)) - {labels}
        if not other:
            if n > 1:
                log.warning("the labels changed since study %r was trained (train.csv or the corrections): "
                            "this run trains study %r on the current labels (table %s); %r stays in MLflow "
                            "for comparison", f"{prefix}-{targets[0]}", f"{name}-{targets[0]}", labels,
                            f"{prefix}-{targets[0]}")
            return name
    raise DataError(f"study names {prefix}-2 ... {prefix}-999 are all taken by other label tables; "
                    "pass --study NEW_PREFIX")


MODEL_SETTINGS = ("model", "img_size", "pretrained", "age_head", "freeze")   # what a rerun could change by its flags


def trained_settings(uri: str, prefix: str, targets: tuple[str, ...]) -> dict[str, list[dict]]:
    """target -> MODEL_SETTINGS of each model its study ``prefix-target`` holds (its trial runs'
    configs; an older config's missing field reads as its default), read once for every check of a
    run's start. A config that no longer reads is left to the study's pins."""
    return {t: _settings_of(find_runs(uri, study=f"{prefix}-{t}")) for t in targets}


def _settings_of(runs: pd.DataFrame) -> list[dict]:
    if runs.empty or "tags.config_json" not in runs:
        return []
    out = []
    for text in runs["tags.config_json"].dropna():
        try:
            cfg = TrialConfig.from_dict(json.loads(text))
        except (ValueError, TypeError):
            continue
        out.append({k: getattr(cfg, k) for k in MODEL_SETTINGS})
    return out


def _differs(key: str, old, new) -> bool:
    if key == "pretrained":
        if is_none(old) and is_none(new):   # "" is the old spelling of none
            return False
        if new not in (HUB, *SOURCES) and not is_none(new):   # a weights file: each run stages it under a
            return False                                       # name of its own; the pins compare its content
    return old != new


def check_model_settings(prefix: str, trained: dict[str, list[dict]], wanted: dict[str, dict]) -> None:
    """Stop before anything trains where a target's study holds models (``trained``: trained_settings)
    trained another way than ``wanted`` (target -> the trial settings this run gives it: `run
    --head-backbone gender=B` again with another B, or `--backbone` changed between runs). The
    study's pins would refuse it too, but only when that target starts: after the targets before it
    trained, on the budget's clock."""
    problems = []
    for target, settings in wanted.items():
        for old in trained.get(target, []):
            changed = [f"{k} {old[k]} -> {v}" for k, v in settings.items()
                       if k in MODEL_SETTINGS and _differs(k, old[k], v)]
            if changed:
                problems.append(f"study {f'{prefix}-{target}'!r} holds models trained with other settings "
                                f"({', '.join(changed)}); rerun with its settings, or train these under a new "
                                f"prefix: --study {prefix}-new")
                break
    if problems:
        raise DataError(problems)


def resumed_age_head(trained: dict[str, list[dict]]) -> str | None:
    """The age head the run's studies of a target with age trained with (``trained``:
    trained_settings; None: none trained yet): a rerun without --age-head resumes them as they
    are, also where `run`'s default changed since."""
    for target in (t for t in trained if "age" in output_slices(t)):
        for old in trained[target]:
            return old["age_head"]
    return None


def _usable(uri: str, study: str, head: str, labels: str, full: bool) -> str | None:
    """Why ``study`` cannot vote for ``head`` (None: it can)."""
    cv = find_runs(uri, study=study, phase="cv")
    cv = cv[cv["status"] == "FINISHED"] if not cv.empty else cv
    if cv.empty:
        return f"{study!r} has no finished cv models"
    if _labels_of(cv) - {labels}:
        return f"{study!r} was trained on another label table"
    if full and find_runs(uri, study=study, phase="full").query("status == 'FINISHED'").empty:
        return f"{study!r} has no full-data models (they vote under --eval-vote full)"
    return None


def voting_studies(uri: str, prefix: str, trained: tuple[str, ...], labels: str, full: bool) -> dict[str, str]:
    """head -> the study that votes for it: the study this run trains for it (a target in
    ``trained``), else the run's earlier one of its own name or the joint one."""
    if ALL in trained:   # a head of its own model beside the joint one (`run --head-backbone`) votes with it
        return {h: f"{prefix}-{h if h in trained else ALL}" for h in HEADS}
    out, missing = {h: f"{prefix}-{h}" for h in trained}, []
    for head in (h for h in HEADS if h not in trained):
        why = []
        for study in (f"{prefix}-{head}", f"{prefix}-{ALL}"):
            reason = _usable(uri, study, head, labels, full)
            if reason is None:
                out[head] = study
                break
            why.append(reason)
        else:
            missing.append(f"head {head}: {' and '.join(why)}")
    if missing:
        raise DataError([f"--heads {','.join(trained)} trains only those heads, but the ensemble votes with every "
                         f"head; {m}" for m in missing] +
                        [f"train them too (`run --per-head --heads {','.join(HEADS)} --study {prefix}`), "
                         "or train them first on the current labels with the same --study"])
    for head in (h for h in HEADS if h not in trained):
        log.info("%s: votes with study %r (not trained by this run)", head, out[head])
    return out
