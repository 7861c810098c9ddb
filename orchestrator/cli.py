"""python -m orchestrator COMMAND ...: a thin wrapper over the stage entry functions.

``COMMANDS`` is the command table: each command's one-line summary, the function that declares
its options and the one that runs it. Options are declared once, in orchestrator/options.py,
and building the parser imports nothing else heavy: a command's stage modules (torch, Ray
Tune, MLflow, pandas, matplotlib) are imported by the function that runs it, so ``--help``
answers at once. Every command takes --data and --workspace (README 'Commands'). The stages are
quiet (they log); what a user reads is printed here.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

from core.atomic import write_bytes_atomic
from core.errors import DataError, StudyFailed
from core.labels import TABLE, TARGETS
from core.workspace import ARTIFACTS_ENV, STORAGE_ENV, Workspace
from orchestrator.chain.budget import BudgetTooSmall
from results.run_schema import ui_hint
from trainables.pretrained import PretrainedError
from trainables.weights import SOURCES, find_source, source_file

from .options import (
    RUN_AGE_HEAD,
    TRIAL_FLAGS,
    TUNE_FLAGS,
    AuditOptions,
    EnsembleOptions,
    FoldsOptions,
    PreprocessOptions,
    PromoteOptions,
    ReproduceOptions,
    RetrainOptions,
    RunOptions,
    TuneOptions,
    WeightsOptions,
    add_flags,
    picked,
)

log = logging.getLogger("orchestrator")

HEAD_HELP = "mask, gender, age, or all: one model with a classifier per head (one backbone for all three)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"), help="data directory in the competition layout (default: %(default)s)")
    p.add_argument("--workspace", type=Path, default=Path("workspace"), help="where stages leave crops, folds, Tune and MLflow state (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///WS/mlflow.db)")
    p.add_argument("--storage", default=None, help="Tune storage shared by every node: an NFS path or s3://BUCKET/PREFIX "
                   f"(default ${STORAGE_ENV} or WS/tune)")
    p.add_argument("--artifact-location", default=None, help="MLflow artifact root of a new experiment: a shared path "
                   f"or s3://... (default ${ARTIFACTS_ENV} or the store's default)")
    p.add_argument("--log-level", default="INFO", help="(default: %(default)s)")


def _corrections(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corrections", default=None, metavar="FILE|none",
                   help="label corrections CSV (id,field,value); recorded in the workspace, so this and every later "
                        "command trains and scores with it; 'none' clears it (default: the workspace's)")


def _head(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", required=True, choices=TARGETS, help=HEAD_HELP)


def _old_from(a) -> dict:
    return {} if getattr(a, "old_from", None) is None else {"old_from": a.old_from}


def _options(a, cls, **kwargs):
    """``cls(**kwargs)``; an option value it rejects is a usage error naming it, not a traceback."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        a.parser.error(str(exc))


# -- demo-data ---------------------------------------------------------------------------
def _demo_args(p):
    from core.demo_data import DemoSpec  # heavy (numpy, PIL): its defaults, for this command only
    p.add_argument("out", nargs="?", type=Path, default=None, help="output folder (default: --data)")
    add_flags(p, DemoSpec, "train_persons", "eval_persons", "seed")


def _demo(a) -> int:
    from core.demo_data import DemoSpec, write_demo_data  # heavy (numpy, PIL)
    out = write_demo_data(a.out or a.data, DemoSpec(**picked(a, DemoSpec)))
    print(f"demo data written to {out} ({a.train_persons} train persons, {a.eval_persons} eval persons)")
    return 0


# -- eda ---------------------------------------------------------------------------------
def _train_args(p):
    add_flags(p, {"old_from": None}, "old_from")


def _eda(a) -> int:
    from core.label_table import load_labels  # heavy (pandas)
    from orchestrator.stages.eda import write_eda  # heavy (matplotlib)
    train = load_labels(a.data, Workspace(a.workspace), **_old_from(a))
    files = write_eda(train, Workspace(a.workspace).results / "eda")
    print("EDA written:\n  " + "\n  ".join(map(str, files)))
    return 0


# -- folds -------------------------------------------------------------------------------
def _folds_args(p):
    _train_args(p)
    add_flags(p, FoldsOptions, "folds", "seed", "fold_mode")


def _folds(a) -> int:
    from core.folds import FoldSpec, ensure_folds, fold_file  # heavy (sklearn, pandas)
    from core.label_table import load_labels  # heavy (pandas)
    spec = FoldSpec(a.folds, a.seed, a.fold_mode)
    train = load_labels(a.data, Workspace(a.workspace), **_old_from(a))
    folds = ensure_folds(train, Workspace(a.workspace).root, spec)
    sizes = folds.groupby("fold").agg(images=("path", "size"), persons=("person", "nunique"))
    print(f"folds saved to {fold_file(Workspace(a.workspace).root, spec)}\n{sizes.to_string()}")
    return 0


# -- preprocess --------------------------------------------------------------------------
def _preprocess_args(p):
    from core.faces import CropSettings  # heavy (numpy, PIL): its defaults, for this command only
    add_flags(p, PreprocessOptions, "address", "workers", "gpus_per_worker", "batch_size", "max_failed", "progress",
              batch_size="images per Ray task")
    add_flags(p, CropSettings, "size", "margin", "prob_threshold", "min_face_size", "thresholds", "detect_scale",
              "second_pass", "fallback", "person_prior")


def _preprocess(a) -> int:
    from core.faces import CropSettings  # heavy, as in _preprocess_args
    from orchestrator.stages.preprocess import preprocess  # heavy (pandas, Ray, MTCNN)
    settings = _options(a, CropSettings, **picked(a, CropSettings))   # a bad --thresholds: exit 2, nothing made
    m = preprocess(a.data, Workspace(a.workspace).make(), settings, address=a.address,
                   workers=a.workers, num_gpus_per_worker=a.gpus_per_worker, progress=a.progress,
                   batch_size=a.batch_size)
    s = m.attrs["summary"]
    print(s.line())
    if s.failed > a.max_failed * s.images:
        bad = m.loc[m["error"] != "", ["path", "error"]].head(10).to_string(index=False)
        print(f"error: {s.failed} of {s.images} images could not be read (more than --max-failed "
              f"{a.max_failed:g}); first ones:\n{bad}", file=sys.stderr)
        return 1
    return 0


# -- ensemble ----------------------------------------------------------------------------
def _ensemble_args(p):
    add_flags(p, EnsembleOptions, "runs", "vote", "tta", "calibrate", "study", "include_full", "eval_vote",
              "batch_size", "submission", "use_ray", "address", "gpus_per_model", "cpus_per_model",
              study="default selection from this study, or one per head: mask=S1,gender=S2,age=S3 (default: the "
                    "newest; heads left out too)",
              batch_size="images per forward pass", address="Ray cluster address, implies --ray ('auto': the "
                                                            "running `ray up` cluster)")


def _ensemble(a) -> int:
    from orchestrator.stages.ensemble import ensemble  # heavy (mlflow, torch)
    from results.selection import parse_studies  # heavy (mlflow)
    opts = _options(a, EnsembleOptions, **picked(a, EnsembleOptions, runs=tuple(a.runs), study=parse_studies(a.study)))
    res = ensemble(a.data, Workspace(a.workspace), opts)
    m = res.metrics
    print(f"submission written to {res.submission}\nreport in {res.report_dir / 'report.md'} "
          f"(MLflow run {res.mlflow_run_id})\nOOF macro F1 {m['oof_f1_before']:.4f} -> "
          f"{m['oof_f1_after']:.4f} after calibration ({m['oof_f1_after_heldout']:.4f} with offsets "
          f"fitted on other persons); accuracy {m['oof_accuracy_after']:.4f}\n"
          f"the ensemble as one model: models:/{res.model_id} (`python -m orchestrator promote` registers it)")
    return 0


# -- audit -------------------------------------------------------------------------------
def _audit_args(p):
    add_flags(p, AuditOptions, "study", "min_score", "max_share", "sheet_persons", "experiment",
              study="study whose cv folds give the evidence: S, or per head mask=S1,gender=S2,age=S3 (default: "
                    "each head's newest)")


def _audit(a) -> int:
    from orchestrator.stages.audit import audit  # heavy (mlflow, matplotlib)
    from results.selection import parse_studies  # heavy (mlflow)
    if not 0 < a.min_score <= 1:
        raise DataError(f"--min-score {a.min_score}: give a share of probability in (0, 1], e.g. 0.5")
    if not 0 < a.max_share <= 1:
        raise DataError(f"--max-share {a.max_share}: give a share of the persons in (0, 1], e.g. 0.05")
    res = audit(a.data, Workspace(a.workspace), AuditOptions(**picked(a, AuditOptions, study=parse_studies(a.study))))
    counts = ", ".join(f"{k} {v}" for k, v in res.suspects["field"].value_counts().items()) or "none"
    print(f"audit: {len(res.suspects)} suspect(s) ({counts}); {len(res.corrections)} suggested correction(s)\n"
          f"  {res.out_dir / 'suspects.csv'}\n  {res.out_dir / 'corrections_suggested.csv'}\n"
          f"  {res.sheet or '(no contact sheet: no suspect)'}\n  MLflow run {res.mlflow_run_id}\n"
          "review or edit the suggestions, then train on them (with your run's other options):\n  "
          + command_with(["run", "--data", str(a.data), "--workspace", str(a.workspace)], "--corrections",
                         res.out_dir / "corrections_suggested.csv"))
    return 0


# -- run ---------------------------------------------------------------------------------
def _run_args(p):
    backbones = ", ".join(sorted({f"{t} {r.run_backbone}" for t, r in TABLE.items()}))
    add_flags(p, RunOptions, "budget_s", "joint", "heads", "full_seeds", "smoke_test", "backbone", "model", "img_size",
              "batch_size", "pretrained", "precision", "age_head", "freeze", "folds", "num_samples", "epochs", "max_epochs", "study",
              "gpus_per_trial", "cpus_per_trial", "address", "calibrate", "eval_vote", "seed", "head_backbone",
              age_head=f"the age head's classifier: ordinal (one score and learned cut points between the ordered "
                       f"groups: cumulative logits, trainables/ordinal_head.py) or softmax (a logit per group, the "
                       f"recipe's) (default: {RUN_AGE_HEAD}, measured best under a budget; a rerun keeps the one its "
                       f"studies trained with)",
              backbone=f"model, input side and starting weights of every target, by name (default: each target's "
                       f"row in the head table: {backbones})",
              num_samples="search trials per study (at most, under a budget); 1: no search, the cv folds train the "
                          "recipe's config",
              epochs="epochs per trial without a budget", study="study name prefix (<study>-<head>); a rerun resumes it")


def _run(a) -> int:
    from orchestrator.stages.run import run_all  # heavy (mlflow, Ray Tune, torch): the stages of the whole chain
    opts = _options(a, RunOptions, **picked(a, RunOptions))
    ws = Workspace(a.workspace)
    try:
        res = run_all(a.data, ws, opts)
    except BudgetTooSmall as exc:   # before any trial started: a usage error, nothing charged
        a.parser.error(str(exc))
    uri = ws.tracking_uri(a.tracking_uri)
    ens, audit = res["ensemble"], res["audit"]
    if res["study"] != opts.study:
        print(f"study:      {res['study']} (the labels changed since study prefix {opts.study!r} was trained; "
              "it stays in MLflow for comparison)")
    print(f"submission: {ens.submission}\nreport:     {ens.report_dir}\n"
          f"MLflow:     {ui_hint(uri)}\n"
          f"            the ensemble as one model: models:/{ens.model_id} (python -m orchestrator promote registers it)")
    if audit is not None:
        print(f"audit:      {len(audit.suspects)} suspect label(s), {len(audit.corrections)} suggested correction(s) "
              f"in {audit.out_dir}; review or edit the suggestions, then apply them with:\n"
              f"            {command_with(a.argv, '--corrections', audit.out_dir / 'corrections_suggested.csv')}")
    print(f"done in {res['seconds']:.0f} s" + (f" of a {opts.budget_s:.0f} s budget" if opts.budget_s else ""))
    return 0


# -- tune --------------------------------------------------------------------------------
def _tune_args(p):
    _head(p)
    add_flags(p, TuneOptions, *TUNE_FLAGS,
              seed="the study's seed: its fold assignment, search sampler and trials (a resume must give the one "
                   "it started with; the command a stopped study prints does)")
    add_flags(p, dict.fromkeys(TRIAL_FLAGS), *TRIAL_FLAGS)   # unset: the recipe's (TuneOptions.trial)


def _tune_options(a) -> TuneOptions:
    """The study's options; the trial settings given go to TuneOptions.trial (else the recipe's)."""
    trial = {k: getattr(a, k) for k in TRIAL_FLAGS if getattr(a, k) is not None}
    return _options(a, TuneOptions, **picked(a, TuneOptions, trial=trial))


def _tune(a) -> int:
    from orchestrator.stages.tune import StudyInterrupted, study_configs, tune_head  # heavy (mlflow, Ray Tune)
    from results.tables import markdown_table  # heavy (pandas)
    opts = _tune_options(a)
    try:
        study_configs(a.head, opts)   # a trial setting the model cannot take: a usage error, nothing recorded
    except ValueError as exc:
        a.parser.error(str(exc))
    ws = Workspace(a.workspace)
    try:
        table = tune_head(a.data, ws, a.head, opts)
    except StudyInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    uri, study = ws.tracking_uri(a.tracking_uri), opts.study_name(a.head)
    print(f"\nbest trials of study {study!r} (head {a.head}):\n{markdown_table(table)}\n"
          f"MLflow: {uri}, experiment {opts.experiment!r}, runs tagged study={study!r}"
          f" (UI: {ui_hint(uri, opts.experiment)})")
    return 0


# -- retrain -----------------------------------------------------------------------------
def _retrain_args(p):
    _head(p)
    add_flags(p, RetrainOptions, "seeds", "study", "gpus_per_trial", "cpus_per_trial", "address", "experiment",
              study="study whose cv runs to use (default: the head's newest)")


def _retrain(a) -> int:
    from orchestrator.stages.retrain import retrain_head  # heavy (mlflow, Ray Tune)
    ws = Workspace(a.workspace)
    run_ids = retrain_head(a.data, ws, a.head, tracking_uri=a.tracking_uri, **picked(a, RetrainOptions))
    print(f"full-data model(s): MLflow run(s) {', '.join(run_ids)} (logged model 'model') in "
          f"{ws.tracking_uri(a.tracking_uri)}")
    return 0


# -- reproduce ---------------------------------------------------------------------------
def _reproduce_args(p):
    p.add_argument("run_id", help="the MLflow run id of a trial (from its page in the MLflow UI)")
    add_flags(p, ReproduceOptions, "threads", "tolerance")


def _reproduce(a) -> int:
    from orchestrator.stages.reproduce import reproduce  # heavy (torch): trains the trial again
    from results.tables import markdown_table  # heavy (pandas)
    r = reproduce(a.data, Workspace(a.workspace), a.run_id, tracking_uri=a.tracking_uri, threads=a.threads,
                  tolerance=a.tolerance)
    print(markdown_table(r.table))
    for note in r.notes:
        print(f"note: {note}")
    print(r.verdict())
    return 0 if r.matches else 1


# -- weights -----------------------------------------------------------------------------
def _weights_args(p):
    add_flags(p, WeightsOptions, "source", "model", "out",
              model="the timm model the weights are for (default: the package's)")


def _weights(a) -> int:
    from results.tables import markdown_table  # heavy (pandas)
    if a.source is None:
        rows = [{"--pretrained": s.alias, "timm model": s.model, "pip package": s.pip,
                 "installed": str(source_file(s) or "no")} for s in SOURCES.values()]
        import pandas as pd  # heavy: only the listing needs a table
        print(markdown_table(pd.DataFrame(rows)))
        return 0
    from trainables.models import write_timm_weights  # heavy (torch, timm)
    src = find_source(a.source)
    model = a.model or (src.model if src else None)
    if model is None or a.out is None:
        a.parser.error("--source FILE needs --model (the timm model) and --out; a package needs --out")
    out = write_timm_weights(model, a.source, a.out)
    print(f"{out}: the weights of timm model {model} in its own layout; use them with --model {model} --pretrained {out}")
    return 0


# -- promote -----------------------------------------------------------------------------
def _promote_args(p):
    add_flags(p, PromoteOptions, "model", "name", "alias", "experiment",
              model="what to register: a logged model id (m-...), runs:/RUN_ID/model or a run id (default: the "
                    "newest ensemble's pyfunc model)")


def _promote(a) -> int:
    from orchestrator.stages.promote import promote  # heavy (mlflow)
    p = promote(Workspace(a.workspace).tracking_uri(a.tracking_uri), **picked(a, PromoteOptions))
    use = (f"mlflow.pyfunc.load_model({p.uri!r}).predict(crops)" if p.is_ensemble
           else f"python -m orchestrator ensemble --runs {p.uri}")
    print(f"registered logged model {p.model_id} as models:/{p.name}/{p.version}, alias @{p.alias}; use it: {use}")
    return 0


COMMANDS = {
    # name: (summary, declare its options, run it)
    "demo-data": ("write the built-in synthetic data set in the competition layout", _demo_args, _demo),
    "eda": ("plots and tables of the label distributions", _train_args, _eda),
    "folds": ("make (or show) the saved person-level fold assignment", _folds_args, _folds),
    "preprocess": ("crop faces with MTCNN on Ray workers (cached, resumable)", _preprocess_args, _preprocess),
    "tune": ("Ray Tune + Optuna study for one head", _tune_args, _tune),
    "retrain": ("retrain a head's best config on all data", _retrain_args, _retrain),
    "ensemble": ("fold + full-data vote with TTA; writes the submission and report", _ensemble_args, _ensemble),
    "reproduce": ("train a logged trial again from its recorded inputs and compare its metrics",
                  _reproduce_args, _reproduce),
    "audit": ("suspect training labels from the folds' out-of-fold predictions (report only)", _audit_args, _audit),
    "promote": ("register a logged model (default: the newest ensemble) and set an alias", _promote_args, _promote),
    "run": ("the whole chain: demo data if needed, preprocess, tune, retrain, ensemble, audit", _run_args, _run),
    "weights": ("list the installed weights packages, or write one (or a file of another layout) in timm's layout",
                _weights_args, _weights),
}


def _export_storage(a) -> None:
    """--storage / --artifact-location win over the environment; every Workspace made by this
    command (there are several) then picks them up (core/workspace.py)."""
    for value, env in ((a.storage, STORAGE_ENV), (a.artifact_location, ARTIFACTS_ENV)):
        if value:
            os.environ[env] = value


def command_with(argv: list[str], option: str, value) -> str:
    """This command line (``argv``) with ``option value`` instead of any value it had: what to
    type to run it again with that change."""
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith(option + "="):
            skip = False
            continue
        skip = arg == option
        if not skip:
            out.append(arg)
    return shlex.join(["python", "-m", "orchestrator", *out, option, str(value)])


def _restore(path: Path, before: bytes | None) -> None:
    """``path`` as it was: ``before``'s bytes, or no file (None)."""
    if before is None:
        path.unlink(missing_ok=True)
    else:
        write_bytes_atomic(before, path)


@contextmanager
def _corrections_taken(a, refused: tuple):
    """--corrections holds for this and every later command on the workspace (core/label_table.py),
    once this command accepts it: a command ``refused`` (a DataError, a usage error) leaves the
    workspace's record as it was, and the crop manifest too, whose labels `run`'s preprocess may
    already have rewritten (the crops stay cached). A command that trained and then failed
    (StudyFailed) was not refused: its studies trained on the corrections, and the resume it
    prints continues them on those labels."""
    if getattr(a, "corrections", None) is None:
        yield
        return
    from core.label_table import RECORD, corrections_file, set_corrections  # heavy (pandas)
    ws = Workspace(a.workspace)
    kept = [Path(ws.root) / RECORD, ws.manifest]
    before = {f: f.read_bytes() if f.is_file() else None for f in kept}
    path = set_corrections(ws, a.corrections, getattr(a, "data", None))   # a bad file is not recorded
    print(f"label corrections: {path or 'none'} (recorded in the workspace for later commands)")
    try:
        yield
    except refused:
        for f in kept:
            _restore(f, before[f])
        print("label corrections: not recorded (the command was refused): the workspace keeps "
              f"{corrections_file(ws) or 'none'} and the labels of its crop manifest", file=sys.stderr)
        raise


def build_parser(declare=tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The parser of every command; the options of those in ``declare`` only (main declares the
    command it runs: declaring one imports what its defaults need, as pip's command table does)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name in declare:
            _common(p)
            if name != "demo-data":
                _corrections(p)
            add_args(p)
        p.set_defaults(run=run, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[:1]).parse_args(argv)   # the command comes first
    from results.tracking import TrackingError  # heavy (pandas): not for --help
    saved = {k: os.environ.get(k) for k in (STORAGE_ENV, ARTIFACTS_ENV)}
    _export_storage(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    args.argv = list(argv)   # what `run` prints back with another option (command_with)
    refused = (DataError, TrackingError, PretrainedError)
    try:
        with _corrections_taken(args, refused + (SystemExit,)):
            return args.run(args)
    except refused as exc:   # the user's to fix: the message says how
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StudyFailed as exc:   # a trial failed for good: the message names it and how to continue
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:   # the options hold for this command only (main() is also called in-process)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
