"""`ensemble`: the chosen models of every head vote on the eval images (with TTA), the heads
combine into the 18 classes, and the same combination on the out-of-fold predictions gives
the honest macro-F1 estimate, the calibration offsets and the report.

    choose runs (results.selection) -> OOF per head -> joint 18-class OOF -> calibration
    -> eval probabilities per model -> vote per head -> joint -> offsets -> submission.csv
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.csv_input import read_csv
from core.dataset import EVAL_COLUMNS
from core.errors import DataError
from core.label_table import check_runs_labels, current_labels
from core.labels import HEADS, decode, num_outputs, output_slices
from core.manifest import crop_whole, read_manifest
from core.workspace import Workspace
from orchestrator.chain.budget import Laps
from orchestrator.infra.ray_session import ray_session, trial_resources
from orchestrator.options import EnsembleOptions
from results.calibration import Calibration, fit_offsets, heldout_check
from results.ordinal import AGE_DECODES, fit_cuts
from results.report import ReportInputs, write_report
from results.run_schema import ENSEMBLE, ENSEMBLE_MODEL_NAME, OOF_FILE, global_tracking_uri, run_status, start_run
from results.selection import ChosenModel, Studies, check_artifacts, choose_models, model_file, models_table
from results.submission import write_submission
from results.tracking import check_tracking
from results.voting import EVAL_VOTES, VOTES, joint_log_probs, predict_classes, vote, vote_by_key

from .preprocess import crop_priors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleResult:
    submission: Path
    report_dir: Path
    metrics: dict
    offsets: np.ndarray | None = field(repr=False)
    models: pd.DataFrame = field(repr=False)
    mlflow_run_id: str
    model_id: str = ""            # the ensemble's logged pyfunc model (models:/<id>)
    seconds: dict = field(default_factory=dict, repr=False)   # step -> seconds (Laps)


# -- eval images -------------------------------------------------------------------------
def eval_crops(data: Path, ws: Workspace, manifest: pd.DataFrame) -> tuple[list[str], list[Path]]:
    """info.csv's ImageIDs in order and their crop files; every one must exist."""
    info = read_csv(Path(data) / "eval" / "info.csv", EVAL_COLUMNS, "see README 'Data layout'")
    order = info["ImageID"].tolist()
    ev = manifest[manifest["split"] == "eval"].drop_duplicates("image_id").set_index("image_id")
    problems = []
    for image_id in order:
        if image_id not in ev.index:
            problems.append(f"eval image {image_id} (eval/info.csv) is not in the crop manifest {ws.manifest}")
        elif not ev.at[image_id, "crop"]:
            problems.append(f"eval image {image_id} has no crop ({ev.at[image_id, 'error'] or 'no reason given'})")
        elif not crop_whole(ws.crops / ev.at[image_id, "crop"]):
            problems.append(f"eval image {image_id}: crop file {ws.crops / ev.at[image_id, 'crop']} is missing "
                            "or cut short")
    if problems:
        raise DataError(problems + ["fix: re-run `python -m orchestrator preprocess` (it crops what is missing)"])
    return order, [ws.crops / ev.at[i, "crop"] for i in order]


# -- out-of-fold -------------------------------------------------------------------------
LOGGED_VIEWS = ("hflip",)   # the TTA of a trial's validation: what its OOF p0.. average


def view_probs(df: pd.DataFrame, cols: list[str], tta: tuple[str, ...], what: str) -> np.ndarray:
    """OOF probabilities averaged over the views the eval images are predicted with: the original
    view and ``tta`` (columns orig_p0.., hflip_p0..); a table without per-view columns (logged
    before they were) serves only the views its p0.. already average."""
    from trainables.loop import ORIGINAL, mean_of_views  # heavy (torch): the views are torch functions
    views = (ORIGINAL, *tta)
    if all(f"{v}_{c}" in df for v in views for c in cols):
        return mean_of_views([df[[f"{v}_{c}" for c in cols]].to_numpy() for v in views])
    if tuple(tta) == LOGGED_VIEWS:
        return df[cols].to_numpy()
    raise DataError(f"{what}: its out-of-fold predictions average the views {', '.join((ORIGINAL, *LOGGED_VIEWS))} "
                    f"and hold no per-view columns, so they cannot match eval predictions with --tta "
                    f"{','.join(tta) or 'none'}; use --tta {','.join(LOGGED_VIEWS)}, or train the fold models again")


def _read_oof(client: MlflowClient, c: ChosenModel, tmp: Path, tta: tuple[str, ...]) -> pd.DataFrame:
    """``path`` + p0..p{C-1} of head ``c.head`` over the views ``tta`` (a joint model's OOF table
    holds every head's columns side by side: its head's slice is renumbered from p0)."""
    try:
        local = Path(client.download_artifacts(c.run_id, OOF_FILE, str(tmp / c.run_id)))
    except (MlflowException, OSError) as exc:
        raise DataError(f"MLflow run {c.run_id} (head {c.head}, phase {c.phase} fold {c.fold}) has no "
                        f"artifact {OOF_FILE}; pick fold runs that finished, or full-data models only "
                        "(then there is no OOF estimate)") from exc
    df = pd.read_parquet(local)
    cols = [f"p{k}" for k in range(num_outputs(c.model_target))]
    missing = [k for k in ["path", *cols] if k not in df.columns]
    if missing:
        raise DataError(f"MLflow run {c.run_id}: {OOF_FILE} lacks column(s) {', '.join(missing)} "
                        f"(a {c.model_target} model needs path, {cols[0]}..{cols[-1]})")
    mine = cols[output_slices(c.model_target)[c.head]]
    probs = view_probs(df, mine, tta, f"MLflow run {c.run_id} ({OOF_FILE})")
    return pd.DataFrame({"path": df["path"].to_numpy(), **{f"p{k}": probs[:, k] for k in range(len(mine))}})


def head_oof(client: MlflowClient, models: list[ChosenModel], tmp: Path, how: str,
             tta: tuple[str, ...] = LOGGED_VIEWS) -> pd.DataFrame | None:
    """One voted OOF row per training image of one head (None when no fold model has OOF),
    over the same views as the eval predictions (``tta``)."""
    frames = [_read_oof(client, c, tmp, tta) for c in models if c.has_oof]
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    paths, probs = vote_by_key(df["path"].to_numpy(), df.drop(columns="path").to_numpy(), how)
    return pd.DataFrame(probs, index=pd.Index(paths, name="path"))


@dataclass(frozen=True)
class Oof:
    """Out-of-fold predictions on the training images every head covers."""
    paths: np.ndarray                 # [N] manifest paths
    log_probs: np.ndarray             # [N, 18] joint log-probabilities
    y: np.ndarray                     # [N] 18-class truth (competition boundary)
    persons: np.ndarray               # [N] person of each image
    heads: dict = field(repr=False)   # head -> [N, C] voted probabilities


def oof_predictions(client, chosen, train: pd.DataFrame, tmp: Path, how: str,
                    tta: tuple[str, ...] = LOGGED_VIEWS) -> Oof | None:
    """The joint OOF predictions over the views ``tta`` (None when some head has no fold model with OOF)."""
    per_head = {h: head_oof(client, models, tmp, how, tta) for h, models in chosen.items()}
    absent = [h for h, df in per_head.items() if df is None]
    if absent:
        log.warning("no out-of-fold predictions for head(s) %s (no cv/search run chosen): "
                    "no OOF estimate, no calibration", ", ".join(absent))
        return None
    common = sorted(set.intersection(*(set(df.index) for df in per_head.values())) & set(train.index))
    unknown = sorted(set().union(*(set(df.index) for df in per_head.values())) - set(train.index))
    if unknown:
        log.warning("%d OOF image(s) are not training images of the manifest (e.g. %s); ignored",
                    len(unknown), unknown[0])
    if not common:
        raise DataError("the chosen runs' out-of-fold predictions share no training image of the manifest; "
                        "pick fold models of one study (or re-run preprocess if the data changed)")
    heads = {h: df.loc[common].to_numpy() for h, df in per_head.items()}
    log.info("OOF: %d of %d training images covered by every head", len(common), len(train))
    return Oof(np.array(common), joint_log_probs(heads), train.loc[common, "label"].to_numpy(),
               train.loc[common, "person"].to_numpy(), heads)


# -- eval predictions --------------------------------------------------------------------
def predict_run(uri: str, c: ChosenModel, crops: list[str], tta: tuple[str, ...], batch_size: int) -> np.ndarray:
    """One model's [N, C] eval probabilities; runs here or as a Ray task on any node
    (it fetches its own model file, so the node needs only the tracking store and the crops)."""
    from trainables.models import load_model_file  # heavy (torch, timm): only where models predict
    from trainables.predict import predict_probs  # (this process, or a Ray task on another node)
    with tempfile.TemporaryDirectory(prefix="ensemble-model-") as tmp:
        model, cfg = load_model_file(model_file(MlflowClient(uri), c, Path(tmp)))
    if cfg.head != c.model_target:
        raise DataError(f"MLflow run {c.run_id} is tagged head={c.model_target} but holds a {cfg.head} model; fix the tag")
    p = np.asarray(predict_probs(model, cfg, crops, tta=tta, batch_size=batch_size))
    if p.shape != (len(crops), num_outputs(cfg.head)):
        raise DataError(f"MLflow run {c.run_id}: predicted shape {p.shape}, expected "
                        f"({len(crops)}, {num_outputs(cfg.head)})")
    log.info("%s model: run %s (%s fold %s) predicted %d eval images", cfg.head, c.run_id, c.phase, c.fold or "-", len(crops))
    return p


def _predict_on_ray(uri: str, models: list[ChosenModel], crops: list[str], opts: EnsembleOptions) -> list:
    """One Ray task per model, each with its own GPU share (CPU when the cluster has none)."""
    import ray  # heavy: only with --ray
    with ray_session(opts.address, opts.num_cpus):
        res = trial_resources(opts.gpus_per_model, opts.cpus_per_model)
        task = ray.remote(num_cpus=res["cpu"], num_gpus=res["gpu"])(predict_run)
        crops_ref = ray.put(crops)
        return ray.get([task.remote(uri, c, crops_ref, opts.tta, opts.batch_size) for c in models])


def eval_voters(chosen: dict[str, list[ChosenModel]], who: str) -> dict[str, list[ChosenModel]]:
    """The models that vote on the eval images: all chosen, or the full-data ones only."""
    if who == "all":
        return chosen
    out = {h: [c for c in ms if c.phase == "full"] for h, ms in chosen.items()}
    missing = [h for h, ms in out.items() if not ms]
    if missing:
        raise DataError(f"--eval-vote full: head(s) {', '.join(missing)} have no full-data model among the chosen "
                        "runs; run `python -m orchestrator retrain`, or use --eval-vote all")
    return out


def unique_models(chosen: dict[str, list[ChosenModel]]) -> list[ChosenModel]:
    """Each model once (a joint model votes in every head but predicts once), in vote order."""
    return list({c.run_id: c for ms in chosen.values() for c in ms}.values())


def predict_eval(uri: str, chosen: dict[str, list[ChosenModel]], crops: list[Path],
                 opts: EnsembleOptions) -> dict[str, np.ndarray]:
    """head -> [N, C] eval probabilities voted over the head's models."""
    chosen = eval_voters(chosen, opts.eval_vote)
    models = unique_models(chosen)
    paths = [str(p) for p in crops]
    if opts.use_ray or opts.address:
        probs = _predict_on_ray(uri, models, paths, opts)
    else:
        probs = [predict_run(uri, c, paths, opts.tta, opts.batch_size) for c in models]
    by_run = {c.run_id: p for c, p in zip(models, probs)}
    return {h: vote([by_run[c.run_id][:, output_slices(c.model_target)[h]] for c in ms], opts.vote)
            for h, ms in chosen.items()}


# -- the stage ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationOutcome:
    fitted: Calibration | None        # None when off or without OOF
    applied: bool                     # offsets used on the eval predictions
    heldout_f1: float                 # calibrated F1 with offsets fitted on other persons (all of them)
    status: str                       # what happened, in words (report, log)
    shrink: float = 0.0               # share of the fitted offsets applied (0 when not applied)

    @property
    def offsets(self) -> np.ndarray | None:
        return self.fitted.offsets * self.shrink if self.applied else None


def calibrate(oof: Oof | None, opts: EnsembleOptions) -> CalibrationOutcome:
    """Fit per-class offsets on the OOF predictions and decide how much of them to use.

    The held-out check refits the offsets on other persons (several partitions, averaged) and
    scores none, half or all of them on the persons left out; the share with the best mean F1
    is applied. Offsets that do not beat the uncalibrated F1 held out overfit the OOF
    predictions, and offsets that could not be checked (too few persons) are not trusted:
    both are reported but not applied.
    """
    if not opts.calibrate:
        return CalibrationOutcome(None, False, float("nan"), "off (--no-calibrate)")
    if oof is None:
        return CalibrationOutcome(None, False, float("nan"), "off (no out-of-fold predictions)")
    cal = fit_offsets(oof.log_probs, oof.y, opts.calibration)
    check = heldout_check(oof.log_probs, oof.y, oof.persons, spec=opts.calibration)
    words = f"OOF macro F1 {cal.f1_before:.4f} -> {cal.f1_after:.4f} on its fitting data"
    if check is None:   # too few persons to hold any out: an unchecked fit is not used
        log.warning("calibration not checked (%s): offsets not applied", words)
        return CalibrationOutcome(cal, False, float("nan"), f"fitted, not applied (not checked: too few "
                                                            f"persons to hold out): {words}")
    held = ", ".join(f"{s:g}: {f:.4f}" for s, f in zip(check.shrinks, check.mean))
    words += f"; held out by person (share of the offsets: mean F1 of {len(check.f1)} partitions) {held}"
    full = check.at(1.0) if 1.0 in check.shrinks else float("nan")
    shrink = check.best_shrink
    if shrink == 0:
        log.warning("calibration overfits (%s): offsets not applied", words)
        return CalibrationOutcome(cal, False, full, f"fitted, not applied (overfits): {words}")
    return CalibrationOutcome(cal, True, full, f"applied ({shrink:g} of the offsets): {words}", shrink)


def check_ordinal(oof: Oof | None, opts: EnsembleOptions) -> None:
    """The ordinal read needs OOF predictions to fit its cuts on: said before the eval images are predicted."""
    if opts.age_decode == "ordinal" and oof is None:
        raise DataError("age_decode 'ordinal' fits its cuts on out-of-fold predictions, and the models chosen have none "
                        "(select cv fold runs too)")


def ordinal_ages(oof: Oof, cal: CalibrationOutcome, eval_log_probs: np.ndarray, eval_pred: np.ndarray) -> np.ndarray:
    """``eval_pred`` with its ages read as ordinal (results/ordinal.py), cut where the OOF
    prediction, calibrated as the eval one is, scores best."""
    fitted = fit_cuts(oof.log_probs, oof.y, predict_classes(oof.log_probs, cal.offsets))
    log.info("ordinal age: cuts %s, OOF macro F1 %.4f -> %.4f", fitted.cuts, fitted.f1_before, fitted.f1_after)
    return fitted.apply(eval_log_probs, eval_pred)


def studies_text(studies: Studies) -> str:
    """--study as typed: S, or mask=S1,gender=S2,age=S3."""
    if isinstance(studies, dict):
        return ",".join(f"{h}={s}" for h, s in studies.items())
    return studies or ""


def _report_inputs(oof: Oof | None, cal: CalibrationOutcome, train, eval_pred, chosen, opts) -> ReportInputs:
    settings = {"vote": opts.vote, "tta": ",".join(opts.tta) or "none", "calibration": cal.status,
                "include_full": opts.include_full, "eval_vote": opts.eval_vote, "study": studies_text(opts.study) or "(newest)",
                "runs": " ".join(opts.runs) or "(default)"}
    empty = np.zeros(0, dtype=int)
    if oof is None:
        heads0 = {h: empty for h in HEADS}
        return ReportInputs(empty, empty, empty, heads0, heads0, train["label"].to_numpy(), eval_pred,
                            None, models_table(chosen), settings)
    before = predict_classes(oof.log_probs)
    after = predict_classes(oof.log_probs, cal.offsets)
    truth = dict(zip(("mask", "gender", "age"), decode(oof.y)))
    return ReportInputs(oof.y, before, after, truth, {h: p.argmax(1) for h, p in oof.heads.items()},
                        train["label"].to_numpy(), eval_pred, cal.offsets, models_table(chosen), settings,
                        cal.heldout_f1)


def _log_mlflow(client: MlflowClient, opts, chosen, metrics, files, submission, cal, face) -> tuple[str, str]:
    exp = client.get_experiment_by_name(opts.experiment)
    name = f"ensemble · {opts.vote} vote · {sum(len(m) for m in chosen.values())} models"
    rid = start_run(client, exp.experiment_id, role=ENSEMBLE, name=name, tags={"stage": "ensemble"})
    with run_status(client, rid):
        params = {"vote": opts.vote, "tta": ",".join(opts.tta) or "none", "calibrate": opts.calibrate,
                  "include_full": opts.include_full, "eval_vote": opts.eval_vote, "study": studies_text(opts.study),
                  "runs": " ".join(opts.runs)[:500]}
        params.update({f"models_{h}": len(m) for h, m in chosen.items()})
        for k, v in params.items():
            client.log_param(rid, k, v)
        client.log_metric(rid, "calibration_applied", float(cal.applied))
        client.log_metric(rid, "calibration_shrink", float(cal.shrink))
        for k, v in metrics.items():
            if np.isfinite(v):
                client.log_metric(rid, k, float(v))
        client.set_tag(rid, "ensemble_runs", json.dumps({h: [c.run_id for c in m] for h, m in chosen.items()}))
        for f in files:
            client.log_artifact(rid, str(f), "report")
        client.log_artifact(rid, str(submission))
        client.log_dict(rid, {"status": cal.status, "applied": cal.applied, "shrink": cal.shrink,
                              "fitted_offsets": None if cal.fitted is None else cal.fitted.offsets.tolist()},
                        "calibration.json")
        model_id = log_ensemble_model(client, rid, chosen, opts, cal, face)
    return rid, model_id


def log_ensemble_model(client: MlflowClient, rid: str, chosen, opts: EnsembleOptions, cal: CalibrationOutcome,
                       face: tuple | None = None) -> str:
    """What voted on the eval images, as the run's logged pyfunc model ``ensemble``: it predicts
    what submission.csv holds (same members, vote, TTA and offsets), from the eval photos too
    when ``face`` (preprocess.crop_priors) holds how their crops were made."""
    import mlflow
    from mlflow.models import Model

    from serving.ensemble_model import pyfunc_spec, write_ensemble  # heavy (torch, timm): only when it logs
    voters = eval_voters(chosen, opts.eval_vote)
    models = unique_models(voters)
    index = {c.run_id: i for i, c in enumerate(models)}
    with tempfile.TemporaryDirectory(prefix="ensemble-pyfunc-") as tmp:
        files = [model_file(client, c, Path(tmp) / "download" / str(i)) for i, c in enumerate(models)]
        folder = write_ensemble(Path(tmp) / "ensemble", [(f, c.model_target) for f, c in zip(files, models)],
                                {h: [index[c.run_id] for c in ms] for h, ms in voters.items()},
                                vote_how=opts.vote, tta=opts.tta, offsets=cal.offsets, batch_size=opts.batch_size,
                                face=face)
        run = client.get_run(rid)
        model_id = client.create_logged_model(run.info.experiment_id, name=ENSEMBLE_MODEL_NAME, source_run_id=rid,
                                              params=run.data.params, tags={"role": ENSEMBLE},
                                              model_type="pyfunc").model_id
        with global_tracking_uri(client.tracking_uri):
            Model.log(artifact_path=None, name=ENSEMBLE_MODEL_NAME, flavor=mlflow.pyfunc, run_id=rid,
                      model_id=model_id, data_path=str(folder), **pyfunc_spec())
    return model_id


def check_options(opts: EnsembleOptions) -> None:
    """Bad --vote / --tta fail before any model is loaded."""
    from trainables.loop import TTA_VIEWS  # heavy (torch): the views are torch functions
    problems = [f"--tta {t!r} is not a test-time augmentation; valid: {', '.join(TTA_VIEWS)} or none"
                for t in opts.tta if t not in TTA_VIEWS]
    if opts.vote not in VOTES:
        problems.append(f"--vote {opts.vote!r}: use one of {', '.join(VOTES)}")
    if opts.eval_vote not in EVAL_VOTES:
        problems.append(f"--eval-vote {opts.eval_vote!r}: use one of {', '.join(EVAL_VOTES)}")
    if opts.age_decode not in AGE_DECODES:
        problems.append(f"age_decode {opts.age_decode!r}: use one of {', '.join(AGE_DECODES)}")
    elif opts.age_decode == "ordinal" and opts.record:
        problems.append("age_decode 'ordinal' is measured, not recorded: the logged ensemble model decodes "
                        "age by argmax (pass record=False)")
    if problems:
        raise DataError(problems)


def _record(client: MlflowClient, ws: Workspace, opts, chosen, metrics, files, submission, cal) -> tuple[str, str]:
    """The ensemble's MLflow run and its logged pyfunc model: (run id, model id)."""
    face = crop_priors(ws)
    if face is None:
        log.warning("no crop settings in %s: the logged ensemble model takes face crops only, not photos", ws.crops)
    return _log_mlflow(client, opts, chosen, metrics, files, submission, cal, face)


def ensemble(data: Path, ws: Workspace | Path, options: EnsembleOptions = EnsembleOptions()) -> EnsembleResult:
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    opts = options
    check_options(opts)
    laps = Laps()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one bar per file floods the log
    uri = ws.tracking_uri(opts.tracking_uri)
    check_tracking(uri)           # an unreachable server is named before any work
    client = MlflowClient(uri)
    chosen = choose_models(client, opts.runs, study=opts.study, include_full=opts.include_full,
                           experiment=opts.experiment)
    check_artifacts(client, chosen)
    laps.lap("models")
    _, labels = current_labels(data, ws)   # the manifest's labels = train.csv + corrections
    check_runs_labels({c.run_id: c.labels for models in chosen.values() for c in models}, labels,
                      "train the heads again on the current labels (tune with a new --study, then retrain) "
                      "or pick runs trained on them with --runs")
    manifest = read_manifest(ws.manifest)
    order, crops = eval_crops(data, ws, manifest)
    train = manifest[manifest["split"] == "train"].drop_duplicates("path").set_index("path")
    with tempfile.TemporaryDirectory(prefix="ensemble-") as tmp:
        oof = oof_predictions(client, chosen, train, Path(tmp), opts.vote, opts.tta)
    laps.lap("oof")
    check_ordinal(oof, opts)
    cal = calibrate(oof, opts)
    laps.lap("calibration")
    eval_heads = predict_eval(uri, chosen, crops, opts)
    eval_log_probs = joint_log_probs(eval_heads)
    eval_pred = predict_classes(eval_log_probs, cal.offsets)
    laps.lap("prediction")
    if opts.age_decode == "ordinal":
        eval_pred = ordinal_ages(oof, cal, eval_log_probs, eval_pred)
    submission = opts.submission or ws.results / "submission.csv"
    write_submission(order, pd.DataFrame({"image_id": order, "ans": eval_pred}), submission)
    report_dir = opts.report_dir or ws.results / "ensemble"
    metrics, files = write_report(_report_inputs(oof, cal, train, eval_pred, chosen, opts), report_dir)
    laps.lap("report")
    rid, model_id = _record(client, ws, opts, chosen, metrics, files, submission, cal) if opts.record else ("", "")
    laps.lap("record")
    log.info("calibration %s", cal.status)
    log.info("ensemble steps: %s", laps.line())
    return EnsembleResult(Path(submission), report_dir, metrics, cal.offsets,
                          models_table(chosen), rid, model_id, laps.seconds)
