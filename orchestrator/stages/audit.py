"""`audit`: which training labels look wrong, from the cv folds' out-of-fold predictions.

    cv runs of the study (results.selection) -> OOF per head (the ensemble's reader)
    -> evidence per person and image (results.audit) -> WS/results/audit/STUDY/:
       suspects.csv, corrections_suggested.csv (the --corrections format: the corrections in
       effect, then the suggestions), suspects.png
    -> one MLflow run tagged stage=audit with those files.

Report only: nothing is applied. A user reads the sheet, edits the suggestions and passes them
back with `run --corrections FILE`. The labels audited are the workspace's (train.csv plus its
recorded corrections), and the fold models must have trained on exactly those.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from core.atomic import write_csv_atomic
from core.csv_input import read_csv
from core.errors import DataError
from core.label_table import check_runs_labels, corrections_file, current_labels
from core.labels import COMPETITION_OLD_AGE
from core.manifest import read_manifest
from core.workspace import Workspace
from orchestrator.options import AuditOptions
from results.audit import AuditInputs, audit_suspects, person_predictions, suggested_corrections
from results.contact_sheet import contact_sheet
from results.run_schema import AUDIT, OOF_FILE, run_status, start_run
from results.selection import ChosenModel, choose_models, study_of
from results.tracking import check_tracking

from .ensemble import oof_predictions

log = logging.getLogger(__name__)
FIELDS = ("gender", "age", "swap", "mask")


@dataclass(frozen=True)
class AuditResult:
    out_dir: Path
    suspects: pd.DataFrame
    corrections: pd.DataFrame
    sheet: Path | None
    mlflow_run_id: str


def _has_oof_file(client: MlflowClient, run_id: str) -> bool:
    return any(a.path == OOF_FILE for a in client.list_artifacts(run_id, "oof"))


def fold_models(client: MlflowClient, opts: AuditOptions) -> dict[str, list[ChosenModel]]:
    """Per head, the study's cv fold models; at least two folds, else there is no OOF evidence."""
    chosen = choose_models(client, study=opts.study, include_full=False, experiment=opts.experiment)
    problems = []
    for head, models in chosen.items():
        models = chosen[head] = [c for c in models if c.has_oof and _has_oof_file(client, c.run_id)]
        folds = sorted({c.fold for c in models})
        where = f"study {study_of(opts.study, head)!r}" if study_of(opts.study, head) else "the newest study"
        if not folds:
            problems.append(f"head {head}: {where} has no cv fold run with out-of-fold predictions "
                            f"({OOF_FILE}); train it with `python -m orchestrator run` (or tune) and --folds >= 2")
        elif len(folds) < 2:
            problems.append(f"head {head}: {where} has out-of-fold predictions of a single fold ({folds[0]}): they "
                            "cover one fold's persons only; train the study with --folds >= 2")
    if problems:
        raise DataError(problems)
    return chosen


def old_from_of(client: MlflowClient, chosen: dict[str, list[ChosenModel]]) -> int:
    """The age models' training boundary of "old" (their age classes use it)."""
    values = {client.get_run(c.run_id).data.params.get("old_from") for c in chosen["age"]}
    values.discard(None)
    if len(values) > 1:
        raise DataError(f"the age fold models trained with different old boundaries ({', '.join(sorted(values))}); "
                        "audit one study at a time (--study)")
    return int(values.pop()) if values else COMPETITION_OLD_AGE


def audit_inputs(train: pd.DataFrame, oof, old_from: int, study: str) -> AuditInputs:
    """The images with OOF predictions; every training person needs some."""
    covered = set(train.loc[oof.paths, "person"])
    missing = sorted(set(train["person"]) - covered)
    if missing:
        raise DataError(f"{len(missing)} training person(s) have no out-of-fold prediction in study {study!r} "
                        f"(first: {', '.join(missing[:5])}): the data changed since the study trained; "
                        "re-run the study on this data (or audit the study that trained on it)")
    images = train.loc[oof.paths].reset_index()[["person", "path", "kind", "mask", "gender", "age"]]
    return AuditInputs(images, oof.heads, old_from)


def cap(suspects: pd.DataFrame, inp: AuditInputs, max_share: float) -> int:
    """Suggestions per field; a field with more suspects than that says its models are weak."""
    persons = inp.images["person"].nunique()
    most = max(1, math.ceil(max_share * persons))
    for field, n in suspects.loc[suspects["suggestion"] != "", "field"].value_counts().items():
        if n > most:
            log.warning("audit: %d of %d persons are %s suspects: the fold models disagree with that many "
                        "labels, which says more about the models than the labels; suggesting the strongest "
                        "%d (--max-share %g)", n, persons, field, most, max_share)
    return most


def audit_dir(ws: Workspace, study: str) -> Path:
    """WS/results/audit/STUDY: one folder per audited study, so that auditing the study trained
    on a suggestions file never overwrites the file in effect (`run --corrections` takes it)."""
    return ws.results / "audit" / study.replace(",", "+")


def with_corrections_in_effect(current: Path | None, suggested: pd.DataFrame) -> pd.DataFrame:
    """The file to train on next: the corrections already in effect (the audited labels include
    them), then the new suggestions. Corrections apply in order (core/corrections.py), so a new
    suggestion for a field overrides the earlier one and a second swap undoes the first.
    ``current``: the workspace's corrections file (None: none in effect)."""
    if current is None:
        return suggested
    kept = read_csv(current, ("id", "field", "value"), "columns are id,field,value[,note]")
    kept = kept.reindex(columns=list(suggested.columns), fill_value="")
    kept["note"] = [f"in effect ({current.name}){': ' + n if n else ''}" for n in kept["note"]]
    return pd.concat([kept, suggested], ignore_index=True)


def write_outputs(inp: AuditInputs, suspects, corrections, ws: Workspace, persons: int, study: str):
    out = audit_dir(ws, study)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "corrections_suggested.csv"
    current = corrections_file(ws)
    if current is not None and current.resolve() == target.resolve():
        raise DataError(f"{target} is the workspace's corrections file in effect, and auditing study {study!r} "
                        "would overwrite it; copy it elsewhere and pass --corrections COPY first")
    write_csv_atomic(suspects, out / "suspects.csv")
    write_csv_atomic(with_corrections_in_effect(current, corrections), target)
    manifest = read_manifest(ws.manifest).drop_duplicates("path").set_index("path")
    sheet = contact_sheet(suspects, person_predictions(inp), lambda p: ws.crops / manifest.at[p, "crop"],
                          out / "suspects.png", persons)
    return out, sheet


def log_audit(client: MlflowClient, opts: AuditOptions, study: str, suspects, corrections, files) -> str:
    exp = client.get_experiment_by_name(opts.experiment)
    rid = start_run(client, exp.experiment_id, role=AUDIT, name=f"audit · study {study}",
                    tags={"stage": "audit", "study": study})
    with run_status(client, rid):
        client.log_param(rid, "min_score", opts.min_score)
        client.log_param(rid, "max_share", opts.max_share)
        client.log_param(rid, "study", study)
        for f in FIELDS:
            client.log_metric(rid, f"suspects_{f}", float((suspects["field"] == f).sum()))
        client.log_metric(rid, "corrections_suggested", float(len(corrections)))
        for f in files:
            client.log_artifact(rid, str(f), "audit")
    return rid


def audit(data: Path, ws: Workspace | Path, opts: AuditOptions = AuditOptions()) -> AuditResult:
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = ws.tracking_uri(opts.tracking_uri)
    check_tracking(uri)
    client = MlflowClient(uri)
    chosen = fold_models(client, opts)
    study = ",".join(sorted({c.study for ms in chosen.values() for c in ms}))
    # the evidence is read against the manifest's labels: the ones the fold models trained on
    _, labels = current_labels(data, ws)
    check_runs_labels({c.run_id: c.labels for ms in chosen.values() for c in ms}, labels,
                      "audit the study trained on the current labels (--study), or train one on them")
    train = read_manifest(ws.manifest)
    train = train[(train["split"] == "train") & (train["error"] == "")].drop_duplicates("path").set_index("path")
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        oof = oof_predictions(client, chosen, train, Path(tmp), "soft")
    inp = audit_inputs(train, oof, old_from_of(client, chosen), study)
    suspects = audit_suspects(inp, opts.min_score)
    corrections = suggested_corrections(suspects, opts.min_score, cap(suspects, inp, opts.max_share))
    out, sheet = write_outputs(inp, suspects, corrections, ws, opts.sheet_persons, study)
    files = [out / "suspects.csv", out / "corrections_suggested.csv", *([sheet] if sheet else [])]
    rid = log_audit(client, opts, study, suspects, corrections, files)
    counts = suspects["field"].value_counts().to_dict()
    log.info("audit of %s: %d suspect(s) %s, %d suggested correction(s), written to %s (MLflow run %s)",
             study, len(suspects), counts, len(corrections), out, rid)
    return AuditResult(out, suspects, corrections, sheet, rid)
