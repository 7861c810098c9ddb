"""The ensemble report: honest out-of-fold scores, per-class F1, confusion matrix and the
recipe's insight table (predicted class counts next to training class counts).

Everything lands as PNG + CSV + one ``report.md`` in a results folder; the driver logs the
same files to MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import matplotlib
matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from core.atomic import write_csv_atomic, write_text_atomic
from core.labels import HEADS, NUM_CLASSES, class_names

from core.metrics import accuracy, confusion, macro_f1, per_class_f1
from .tables import markdown_table

HONEST_NOTE = ("Out-of-fold (OOF) scores use the fold models only: every training image is "
               "scored by the one fold model that did not train on it. The full-data model "
               "has seen every image, so it is left out of the OOF estimate (it still votes "
               "on the eval images). `oof_f1_after` is measured on the data the calibration "
               "offsets were fitted on and flatters them; `oof_f1_after_heldout` fits the "
               "offsets on 4/5 of the persons and scores the other 1/5 (5 times): the honest "
               "calibrated estimate.")

NO_OOF_NOTE = ("No out-of-fold estimate: none of the chosen runs of some head carries "
               "out-of-fold predictions (only cv/search fold runs do), so the OOF scores are "
               "NaN and no calibration was fitted. Add the heads' fold runs to get one.")


@dataclass(frozen=True)
class ReportInputs:
    y_true: np.ndarray                      # [N] 18-class OOF truth
    pred_before: np.ndarray                 # [N] OOF prediction without calibration
    pred_after: np.ndarray                  # [N] OOF prediction with calibration (= before when off)
    head_true: Mapping[str, np.ndarray]     # head -> [N] truth
    head_pred: Mapping[str, np.ndarray]     # head -> [N] OOF prediction
    train_labels: np.ndarray                # every training image's 18-class label
    eval_pred: np.ndarray                   # the submission's classes
    offsets: np.ndarray | None = None       # calibration offsets, None when off
    models: pd.DataFrame = field(default_factory=pd.DataFrame)   # the chosen runs
    settings: Mapping[str, object] = field(default_factory=dict)  # vote, tta, ...
    f1_after_heldout: float = float("nan")  # calibrated F1 with offsets fitted on other persons


def summary_metrics(r: ReportInputs) -> dict[str, float]:
    out = {"oof_f1_before": macro_f1(r.y_true, r.pred_before, NUM_CLASSES),
           "oof_f1_after": macro_f1(r.y_true, r.pred_after, NUM_CLASSES),
           "oof_f1_after_heldout": float(r.f1_after_heldout),
           "oof_accuracy_before": accuracy(r.y_true, r.pred_before),
           "oof_accuracy_after": accuracy(r.y_true, r.pred_after),
           "oof_images": float(len(r.y_true))}
    for name, head in HEADS.items():
        out[f"oof_f1_{name}"] = macro_f1(r.head_true[name], r.head_pred[name], head.num_classes)
    return out


def _counts(labels: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES)


def per_class_table(r: ReportInputs) -> pd.DataFrame:
    before = per_class_f1(confusion(r.y_true, r.pred_before, NUM_CLASSES))
    after = per_class_f1(confusion(r.y_true, r.pred_after, NUM_CLASSES))
    offsets = np.zeros(NUM_CLASSES) if r.offsets is None else np.asarray(r.offsets)
    return pd.DataFrame({"class": range(NUM_CLASSES), "name": class_names(),
                         "oof_support": _counts(r.y_true), "f1_before": before.round(4),
                         "f1_after": after.round(4), "offset": offsets.round(2)})


def class_count_table(r: ReportInputs) -> pd.DataFrame:
    """The recipe's insight table: how often each class is predicted vs how often it occurs."""
    cols = {"train": r.train_labels, "oof_pred_before": r.pred_before,
            "oof_pred_after": r.pred_after, "eval_pred": r.eval_pred}
    df = pd.DataFrame({"class": range(NUM_CLASSES), "name": class_names()})
    for col, labels in cols.items():
        counts = _counts(labels)
        df[col] = counts
        df[f"{col}_share"] = (counts / max(counts.sum(), 1)).round(4)
    return df


def _confusion_png(cm: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 8))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ticks = [f"{c} {n}" for c, n in enumerate(class_names())]
    ax.set_xticks(range(NUM_CLASSES), ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(NUM_CLASSES), ticks, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="OOF confusion matrix (row-normalised colour, counts)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _counts_png(counts: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(12, 4.5))
    cols = ["train_share", "oof_pred_after_share", "eval_pred_share"]
    width = 0.8 / len(cols)
    for k, col in enumerate(cols):
        ax.bar(np.arange(NUM_CLASSES) + (k - 1) * width, counts[col], width, label=col.replace("_share", ""))
    ax.set_xticks(range(NUM_CLASSES), counts["name"], rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="share of images", title="class shares: training vs predicted (OOF, eval)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(r: ReportInputs, metrics: dict, per_class: pd.DataFrame, counts: pd.DataFrame) -> str:
    summary = pd.DataFrame({"metric": list(metrics), "value": [float(v) for v in metrics.values()]})
    settings = pd.DataFrame({"setting": list(r.settings), "value": [str(v) for v in r.settings.values()]})
    note = HONEST_NOTE if len(r.y_true) else NO_OOF_NOTE
    parts = ["# Ensemble report", "", note, "", "## Summary", "", markdown_table(summary), ""]
    if len(settings):
        parts += ["## Settings", "", markdown_table(settings), ""]
    if len(r.models):
        parts += ["## Models", "", markdown_table(r.models), ""]
    parts += ["## Per-class F1 (OOF) and calibration offsets", "", markdown_table(per_class), "",
              "## Predicted class counts vs training class counts", "",
              "Macro F1 rewards predicting the rare classes (>=60) about as often as they occur.", "",
              markdown_table(counts), "", "![class counts](class_counts.png)", "",
              "## Confusion matrix (OOF, calibrated)", "", "![confusion](confusion.png)", ""]
    return "\n".join(parts)


def write_report(r: ReportInputs, out: Path) -> tuple[dict[str, float], list[Path]]:
    """Write report.md, CSV tables and PNG plots under ``out``; returns (metrics, files)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = summary_metrics(r)
    per_class, counts = per_class_table(r), class_count_table(r)
    cm = confusion(r.y_true, r.pred_after, NUM_CLASSES)
    files = {"summary.csv": pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())}),
             "per_class.csv": per_class, "class_counts.csv": counts,
             "confusion.csv": pd.DataFrame(cm, index=class_names(), columns=class_names()).reset_index(names="true")}
    if len(r.models):
        files["models.csv"] = r.models
    for name, df in files.items():
        write_csv_atomic(df, out / name)
    _confusion_png(cm, out / "confusion.png")
    _counts_png(counts, out / "class_counts.png")
    write_text_atomic(_markdown(r, metrics, per_class, counts), out / "report.md")
    return metrics, [out / n for n in (*files, "confusion.png", "class_counts.png", "report.md")]
