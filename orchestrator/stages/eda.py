"""The recipe's EDA: gender, age-group and mask distributions and the 18-class counts."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import pandas as pd

from core.atomic import write_csv_atomic, write_text_atomic
from core.labels import HEADS, NUM_CLASSES, class_names
from results.tables import markdown_table


def class_counts(train: pd.DataFrame) -> pd.DataFrame:
    counts = train["label"].value_counts().reindex(range(NUM_CLASSES), fill_value=0)
    return pd.DataFrame({"class": range(NUM_CLASSES), "name": class_names(),
                         "images": counts.to_numpy(), "share": (counts / counts.sum()).round(4).to_numpy()})


def _bar(ax, labels, values, title):
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, rotation=45 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.set_title(title)
    for x, v in enumerate(values):
        ax.annotate(str(v), (x, v), ha="center", va="bottom", fontsize=8)


def write_eda(train: pd.DataFrame, out: Path) -> list[Path]:
    """Write PNG plots and eda.md / class_counts.csv under ``out``; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    persons = train.drop_duplicates("person")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    _bar(axes[0], list(HEADS["gender"].classes), persons["gender"].value_counts().reindex([0, 1], fill_value=0).tolist(), "persons by gender")
    _bar(axes[1], list(HEADS["age"].classes), persons["age_group"].value_counts().reindex([0, 1, 2], fill_value=0).tolist(), "persons by age group")
    _bar(axes[2], list(HEADS["mask"].classes), train["mask"].value_counts().reindex([0, 1, 2], fill_value=0).tolist(), "images by mask state")
    fig.tight_layout()
    heads_png = out / "heads.png"
    fig.savefig(heads_png, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(persons["age"], bins=range(int(persons["age"].min()), int(persons["age"].max()) + 2), color="#55a868")
    ax.set(title="persons by age", xlabel="age", ylabel="persons")
    fig.tight_layout()
    age_png = out / "age_hist.png"
    fig.savefig(age_png, dpi=100)
    plt.close(fig)

    counts = class_counts(train)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    _bar(ax, counts["name"].tolist(), counts["images"].tolist(), "images per class (18)")
    fig.tight_layout()
    classes_png = out / "classes.png"
    fig.savefig(classes_png, dpi=100)
    plt.close(fig)

    write_csv_atomic(counts, out / "class_counts.csv")
    md = (f"# EDA\n\n{persons.shape[0]} persons, {len(train)} images.\n\n"
          "![heads](heads.png)\n\n![age](age_hist.png)\n\n![classes](classes.png)\n\n"
          + markdown_table(counts) + "\n")
    write_text_atomic(md, out / "eda.md")
    return [heads_png, age_png, classes_png, out / "class_counts.csv", out / "eda.md"]
