"""python -m orchestrator COMMAND ...: a thin wrapper over the stage entry functions.

Every command takes --data and --workspace (DESIGN.md 'Workspace'); each command's
own options are declared in one small function beside the one that runs it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import DataError
from .workspace import Workspace

log = logging.getLogger("orchestrator")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"), help="data directory in the competition layout (default ./data)")
    p.add_argument("--workspace", type=Path, default=Path("workspace"), help="where stages leave crops, folds, Tune and MLflow state (default ./workspace)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///WS/mlflow.db)")
    p.add_argument("--log-level", default="INFO")


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old-from", type=int, default=None, help="training age boundary of 'old' (scoring always uses 60)")
    p.add_argument("--corrections", type=Path, default=None, help="label corrections CSV (id,field,value)")


# -- demo-data ---------------------------------------------------------------------------
def _demo_args(p):
    p.add_argument("out", nargs="?", type=Path, default=None, help="output folder (default: --data)")
    p.add_argument("--persons", type=int, default=60, help="training persons (7 images each)")
    p.add_argument("--eval-persons", type=int, default=20)
    p.add_argument("--seed", type=int, default=777)


def _demo(a) -> int:
    from .demo_data import DemoSpec, write_demo_data
    out = write_demo_data(a.out or a.data, DemoSpec(a.persons, a.eval_persons, a.seed))
    print(f"demo data written to {out} ({a.persons} train persons, {a.eval_persons} eval persons)")
    return 0


# -- eda ---------------------------------------------------------------------------------
def _eda(a) -> int:
    from .dataset import load_train
    from .eda import write_eda
    train = load_train(a.data, corrections=a.corrections, **_old_from(a))
    files = write_eda(train, Workspace(a.workspace).results / "eda")
    print("EDA written:\n  " + "\n  ".join(map(str, files)))
    return 0


# -- folds -------------------------------------------------------------------------------
def _folds_args(p):
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--fold-mode", choices=("person", "image"), default="person")


def _folds(a) -> int:
    from .dataset import load_train
    from .folds import FoldSpec, ensure_folds, fold_file
    spec = FoldSpec(a.folds, a.seed, a.fold_mode)
    train = load_train(a.data, corrections=a.corrections, **_old_from(a))
    folds = ensure_folds(train, Workspace(a.workspace).root, spec)
    sizes = folds.groupby("fold").agg(images=("path", "size"), persons=("person", "nunique"))
    print(f"folds saved to {fold_file(Workspace(a.workspace).root, spec)}\n{sizes.to_string()}")
    return 0


# -- preprocess --------------------------------------------------------------------------
def _preprocess_args(p):
    from .faces import CropSettings
    from .preprocess import BATCH, MAX_FAILED
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
    from .faces import CropSettings
    return CropSettings(size=a.size, margin=a.margin, prob_threshold=a.prob_threshold,
                        min_face_size=a.min_face_size, thresholds=a.thresholds,
                        detect_scale=a.detect_scale, second_pass=a.second_pass,
                        fallback=a.fallback, person_prior=not a.no_person_prior)


def _preprocess(a) -> int:
    from .preprocess import preprocess
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


# -- run ---------------------------------------------------------------------------------
def _run(a) -> int:
    from .pipeline import run_all
    run_all(a.data, Workspace(a.workspace))
    return 0


def _later(issue: int):
    def run(a) -> int:
        print(f"'{a.command}' is not built yet (issue #{issue})", file=sys.stderr)
        return 2
    return run


def _old_from(a) -> dict:
    return {} if getattr(a, "old_from", None) is None else {"old_from": a.old_from}


COMMANDS = {
    # name: (help, add-arguments, run)
    "demo-data": ("write the built-in synthetic data set in the competition layout", _demo_args, _demo),
    "eda": ("plots and tables of the label distributions", _train_options, _eda),
    "folds": ("make (or show) the saved person-level fold assignment", lambda p: (_train_options(p), _folds_args(p)), _folds),
    "preprocess": ("crop faces with MTCNN on Ray workers (cached, resumable)", _preprocess_args, _preprocess),
    "tune": ("Ray Tune + Optuna study for one head", lambda p: None, _later(4)),
    "retrain": ("retrain a head's best config on all data", lambda p: None, _later(5)),
    "ensemble": ("fold + full-data vote with TTA; writes the submission and report", lambda p: None, _later(5)),
    "run": ("the whole chain: demo data if needed, preprocess, tune, retrain, ensemble", lambda p: None, _run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
