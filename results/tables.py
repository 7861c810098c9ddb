"""Plain-text tables for reports and the terminal (no extra dependency)."""
from __future__ import annotations

import pandas as pd


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
