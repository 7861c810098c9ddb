"""Which MLflow runs vote in the ensemble, per head.

Default: the K fold models of the head's cv phase (the newest study, or ``study``: one name
for every head or one per head) plus its full-data model. The user can pick instead, by what the MLflow UI shows:
  * a run id (32 hex digits, as in the run's page) or ``runs:/RUN_ID/model``,
  * a registered model URI: ``models:/age-head@champion`` or ``models:/age-head/3`` (that
    version's logged model votes),
  * a logged model's id: ``models:/m-...`` (or ``m-...``),
  * an MLflow search filter: ``tags.study = 'age-lr' and metrics.val_f1 > 0.8``,
  * any of those as ``HEAD=ITEM`` (``gender=RUN_ID``): it votes for that head only (a joint model
    otherwise votes for every head; `reproduce` replays an ensemble whose heads voted with
    different studies this way).
Each picked run names its head in its ``head`` tag; heads the user picked nothing for
keep the default. Registering runs and setting an alias in the UI is enough to change the
ensemble. Every problem is named: the run id, filter or alias, the experiment and the fix.
"""
from __future__ import annotations

import re
from pathlib import Path
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.errors import DataError
from core.labels import ALL, HEADS, TARGETS

from .tracking import local_folder
from .run_schema import (ENSEMBLE, EXPERIMENT, LEGACY_MODEL_FILE, MODEL_PHASES, is_model_run, logged_model_id,
                         weights_uri)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})(?:/.*)?$")
LOGGED_MODEL = re.compile(r"^(?:models:/)?(?P<model_id>m-[0-9a-f]{32})$")
MODEL_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ChosenModel:
    head: str      # the head this model votes for
    run_id: str
    phase: str     # search | cv | full ("" when the run has no phase tag)
    fold: str      # the fold tag ("" for none)
    study: str
    source: str    # "default", "run id", "filter: ...", "models:/..."
    target: str = ""   # what the model predicts, its head tag: the head, or ``all`` (a joint
                       # model votes for every head with its head's slice of its outputs)
    labels: str = ""   # hash of the label table it was trained on (its `labels` tag; core.label_table)
    model_id: str = "" # its MLflow logged model ("" for a run of an older store: LEGACY_MODEL_FILE)

    @property
    def model_target(self) -> str:
        return self.target or self.head

    @property
    def has_oof(self) -> bool:
        """Fold models carry out-of-fold predictions; the full-data model saw every image."""
        return self.phase in ("search", "cv")


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise DataError(f"MLflow experiment {experiment!r} does not exist at {client.tracking_uri}; "
                        "run `python -m orchestrator tune` first, or pass the right --tracking-uri")
    return exp.experiment_id


def _is_model_run(run) -> bool:
    return is_model_run(run.data.tags)


def _chosen(client: MlflowClient, run, source: str, model_id: str | None = None) -> ChosenModel:
    t = run.data.tags
    if t.get("role") == ENSEMBLE:
        raise DataError(f"{source}: MLflow run {run.info.run_id} is a whole ensemble, not a member model; load it "
                        "with mlflow.pyfunc.load_model, or pick member models (trial runs) with --runs")
    return ChosenModel(t.get("head", ""), run.info.run_id, t.get("phase", ""), t.get("fold", ""),
                       t.get("study", ""), source, t.get("head", ""), t.get("labels", ""),
                       model_id if model_id is not None else logged_model_id(client, run))


def _votes_for(c: ChosenModel, head: str) -> ChosenModel | None:
    """``c`` as a voter of ``head``: its own head, or a joint model's slice; None otherwise."""
    if c.model_target == head or c.model_target == ALL:
        return replace(c, head=head)
    return None


def _by_run_ids(client: MlflowClient, ids: Sequence[str]) -> list[ChosenModel]:
    found, missing = [], []
    for run_id in ids:
        try:
            found.append(_chosen(client, client.get_run(run_id), "run id"))
        except MlflowException:
            missing.append(run_id)
    if missing:
        raise DataError([f"MLflow run {r} does not exist at {client.tracking_uri}; copy the run id "
                         "from the MLflow UI (or check --tracking-uri)" for r in missing])
    return found


def _by_model_uri(client: MlflowClient, uri: str) -> ChosenModel:
    m = MODEL_URI.match(uri)
    if m is None:
        raise DataError(f"{uri!r} is not a registered model URI; write models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        mv = (client.get_model_version_by_alias(m["name"], m["alias"]) if m["alias"]
              else client.get_model_version(m["name"], m["version"]))
    except MlflowException as exc:
        raise DataError(f"{uri}: no such registered model version at {client.tracking_uri} "
                        f"({exc.message.splitlines()[0]}); register a run and set the alias in the MLflow UI") from exc
    if not mv.run_id:
        raise DataError(f"{uri}: model version {mv.version} is not linked to a run; register it from a training run")
    # the version's own logged model (the UI registers it as source models:/m-...; an older
    # store's run artifact has none: the run's model file then)
    source = LOGGED_MODEL.match(mv.source or "")
    model_id = getattr(mv, "model_id", None) or (source["model_id"] if source else "")
    return _chosen(client, client.get_run(mv.run_id), uri, model_id)


def _by_logged_model(client: MlflowClient, model_id: str) -> ChosenModel:
    try:
        lm = client.get_logged_model(model_id)
    except MlflowException as exc:
        raise DataError(f"logged model {model_id} does not exist at {client.tracking_uri}; copy its id from "
                        "the run's Logged models in the MLflow UI (or check --tracking-uri)") from exc
    if not lm.source_run_id:
        raise DataError(f"logged model {model_id} is not linked to a run; pick one logged by a trial")
    return _chosen(client, client.get_run(lm.source_run_id), f"models:/{model_id}", model_id)


def _by_item(client: MlflowClient, exp_id: str, experiment: str, item: str) -> list[ChosenModel]:
    """One --runs item: run id, runs:/ URI, logged model id, models:/ URI or a filter."""
    if m := RUN_URI.match(item):
        return _by_run_ids(client, [m["run_id"]])
    if m := LOGGED_MODEL.match(item):
        return [_by_logged_model(client, m["model_id"])]
    if item.startswith("models:/"):
        return [_by_model_uri(client, item)]
    return _by_filter(client, exp_id, experiment, item)


def _by_filter(client: MlflowClient, exp_id: str, experiment: str, flt: str) -> list[ChosenModel]:
    try:
        runs = client.search_runs([exp_id], filter_string=flt, max_results=10_000)
    except MlflowException as exc:
        raise DataError(f"MLflow filter {flt!r} is not valid: {exc.message.splitlines()[0]}; "
                        "see the search syntax in the MLflow UI (e.g. tags.study = 'x')") from exc
    # parent (study) runs and ensemble runs match broad filters too; only models vote
    chosen = [_chosen(client, r, f"filter: {flt}") for r in runs if _is_model_run(r)]
    if not chosen:
        raise DataError(f"MLflow filter {flt!r} matches no model run (phase {'/'.join(MODEL_PHASES)}) "
                        f"in experiment {experiment!r}; loosen the filter")
    return chosen


def _newest_per_fold(runs: list) -> list:
    """A fold trained twice (a rerun) votes once: its newest finished run."""
    newest: dict[str, object] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):
        newest[r.data.tags.get("fold", r.info.run_id)] = r
    return sorted(newest.values(), key=lambda r: r.data.tags.get("fold", ""))


def _search(client, exp_id, head: str, phase: str, study: str | None, finished: bool = True) -> list:
    """Finished (or all) model runs of ``phase`` that predict ``head``: its own and joint (all)
    models, newest first."""
    runs = []
    for target in (head, ALL):
        flt = f"tags.head = '{target}' and tags.phase = '{phase}'"
        if finished:
            flt += " and attributes.status = 'FINISHED'"
        if study:
            flt += f" and tags.study = '{study}'"
        runs += client.search_runs([exp_id], filter_string=flt, max_results=10_000)
    runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    return [r for r in runs if _is_model_run(r)]


def default_models(client: MlflowClient, exp_id: str, experiment: str, head: str,
                   study: str | None, include_full: bool) -> list[ChosenModel]:
    cv = _search(client, exp_id, head, "cv", study)
    if not cv:
        where = f"study {study!r}" if study else "any study"
        raise DataError(f"head {head} has no models: no finished cv runs tagged head={head} in {where} "
                        f"of experiment {experiment!r} at {client.tracking_uri}; run "
                        f"`python -m orchestrator tune --head {head}` (and retrain), or pick runs with --runs")
    study = study or cv[0].data.tags.get("study", "")   # newest study when none is named
    ours = [r for r in cv if r.data.tags.get("study", "") == study]
    chosen = [_votes_for(_chosen(client, r, "default"), head) for r in _newest_per_fold(ours)]
    check_folds_finished(client, exp_id, head, study, {c.fold for c in chosen}, _fold_count(ours))
    full = _search(client, exp_id, head, "full", study or None) if include_full else []
    # every full-data model of the newest retrain (one per seed when it trained several)
    key = full[0].data.tags.get("retrain") if full else None
    newest = [r for r in full if key is not None and r.data.tags.get("retrain") == key] or full[:1]
    return chosen + [_votes_for(_chosen(client, r, "default"), head) for r in newest]


def _fold_count(runs: list) -> int | None:
    """K of the folds the study's cv runs were trained on (their ``folds`` param); None if unknown."""
    ks = {int(r.data.params["folds"]) for r in runs if str(r.data.params.get("folds", "")).isdigit()}
    return max(ks) if ks else None


def check_folds_finished(client, exp_id: str, head: str, study: str, finished: set[str],
                         k: int | None = None) -> None:
    """A study votes with all of its folds or not at all: a fold whose runs all failed (or were
    killed), or that has no run at all (its trial died before its logger started), would leave
    the OOF rows, the calibration and the report on part of the data. ``k``: the study's number
    of folds (None: only folds that have a run are checked)."""
    lost = {}
    for r in _search(client, exp_id, head, "cv", study, finished=False):
        fold = r.data.tags.get("fold", "")
        if fold not in finished:
            lost.setdefault(fold, r)
    unseen = sorted({str(f) for f in range(k or 0)} - finished - set(lost), key=int)
    def resume(target: str) -> str:
        return (f"continue the study with `python -m orchestrator tune --head {target} --study {study} --phase cv "
                "--resume` (or rerun `run`), or pick runs with --runs")
    problems = [f"study {study!r}, head {head}: cv fold {fold} has no finished run (MLflow run {r.info.run_id} "
                f"is {r.info.status}); {resume(r.data.tags.get('head', head))}" for fold, r in sorted(lost.items())]
    problems += [f"study {study!r}, head {head}: cv fold {fold} of {k} has no MLflow run at all (its trial "
                 f"stopped before it logged anything); {resume(head)}" for fold in unseen]
    if problems:
        raise DataError(problems)


Studies = str | Mapping[str, str] | None   # one study for every head, a study per head, or the newest


def parse_studies(text: str | None) -> Studies:
    """``--study``: ``S`` (every head) or ``mask=S1,gender=S2,age=S3`` (heads left out: the newest)."""
    if not text or "=" not in text:
        return text or None
    out: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        head, _, name = (x.strip() for x in item.partition("="))
        if head not in HEADS:
            raise DataError(f"--study {text!r}: unknown head {head!r}; write HEAD=STUDY with HEAD one of "
                            f"{', '.join(HEADS)}")
        if not name:
            raise DataError(f"--study {text!r}: no study name for head {head}; write {head}=STUDY")
        if head in out:
            raise DataError(f"--study {text!r}: head {head} is named twice")
        out[head] = name
    return out


def study_of(studies: Studies, head: str) -> str | None:
    return studies.get(head) if isinstance(studies, Mapping) else studies


def choose_models(client: MlflowClient, selections: Sequence[str] = (), *, study: Studies = None,
                  include_full: bool = True, experiment: str = EXPERIMENT) -> dict[str, list[ChosenModel]]:
    """head -> the models that vote for it (see the module doc for the selection forms);
    ``study`` names the default selection's study, for every head or per head."""
    exp_id = _experiment_id(client, experiment)
    items = [_for_head(s) for s in selections]
    ids = [(only, item) for only, item in items if RUN_ID.match(item)]
    found = _by_run_ids(client, [item for _, item in ids])   # every missing id named at once
    picked = [(only, c) for (only, _), c in zip(ids, found)]
    for only, item in items:
        if not RUN_ID.match(item):
            picked += [(only, c) for c in _by_item(client, exp_id, experiment, item)]
    untagged = [c.run_id for _, c in picked if c.head not in TARGETS]
    if untagged:
        raise DataError([f"MLflow run {r} has no valid head tag ({'/'.join(TARGETS)}); tag it or pick another run"
                         for r in untagged])
    wrong = [f"MLflow run {c.run_id} predicts {c.model_target}, so it cannot vote for {only}: pick a {only} or "
             "all model for it" for only, c in picked if only is not None and _votes_for(c, only) is None]
    if wrong:
        raise DataError(wrong)
    out: dict[str, list[ChosenModel]] = {}
    for head in HEADS:
        mine = []
        for only, c in picked:   # a run picked twice (id and alias) votes once, as first named
            voter = _votes_for(c, head) if only in (None, head) else None
            if voter is not None and c.run_id not in {m.run_id for m in mine}:
                mine.append(voter)
        out[head] = mine or default_models(client, exp_id, experiment, head, study_of(study, head), include_full)
    return out


def _for_head(selection: str) -> tuple[str | None, str]:
    """(the head it votes for only, or None; the item): ``HEAD=ITEM`` or a plain ITEM. A filter's
    ``tags.x = 'y'`` is never read as one: its left side is no head's name."""
    head, sep, item = selection.strip().partition("=")
    if not (sep and head.strip() in HEADS):
        return None, selection.strip()
    if not item.strip():   # an empty item would be an empty filter: every run of the experiment
        raise DataError(f"--runs {selection!r}: give a run id, models:/ URI or MLflow filter after {head.strip()}=")
    return head.strip(), item.strip()


def moved_folder(client: MlflowClient, c: ChosenModel) -> str:
    """The local folder that should hold ``c``'s model where that folder is gone, else "": its
    logged model's folder, or for an older run its experiment's artifact root (a run's own folder
    exists only once it logged a file). A store copied without its artifacts, or an artifact
    folder moved, otherwise fails mid-ensemble with MLflow's own error."""
    if c.model_id:
        location = client.get_logged_model(c.model_id).artifact_location
    else:
        location = client.get_experiment(client.get_run(c.run_id).info.experiment_id).artifact_location
    folder = local_folder(location)
    return str(folder) if folder is not None and not folder.is_dir() else ""


def check_artifacts(client: MlflowClient, chosen: dict[str, list[ChosenModel]]) -> None:
    """Every chosen run must hold its model (a logged model, or an older store's model file);
    say which do not before any work starts."""
    problems = []
    for models in chosen.values():
        for c in models:
            moved = moved_folder(client, c)
            if moved:
                problems.append(f"MLflow run {c.run_id} (head {c.head}, study {c.study}): its artifact folder {moved} "
                                f"is gone (moved or deleted after the run logged it); move it back to that path, "
                                f"or train the model again (`python -m orchestrator tune --head {c.model_target} "
                                "--study NEW_NAME`, then retrain) and pick it")
                continue
            if c.model_id:
                continue
            names = {a.path for a in client.list_artifacts(c.run_id, "model")}
            if LEGACY_MODEL_FILE not in names:
                problems.append(f"MLflow run {c.run_id} (head {c.head}, phase {c.phase or '?'}) has no logged "
                                f"model 'model' (nor an artifact {LEGACY_MODEL_FILE} of older stores); pick a "
                                "run that finished training")
    if problems:
        raise DataError(problems)


def model_file(client: MlflowClient, c: ChosenModel, dst: Path) -> Path:
    """The chosen model's file (state dict + config) downloaded to ``dst``: from its logged
    model, or from an older store's run artifact. Only this file is read, with
    torch.load(weights_only=True): nothing from the store is unpickled or run."""
    import mlflow.artifacts
    if c.model_id:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=weights_uri(client, c.model_id),
                                                        dst_path=str(dst), tracking_uri=client.tracking_uri))
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(c.run_id, LEGACY_MODEL_FILE, str(dst)))


def models_table(chosen: dict[str, list[ChosenModel]]) -> pd.DataFrame:
    return pd.DataFrame([asdict(c) for models in chosen.values() for c in models])
