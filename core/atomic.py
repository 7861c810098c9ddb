"""Atomic file writes: write a temp file beside the target, then rename over it,
so a killed process never leaves a half-written file that a later run would trust."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _tmp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def write_bytes_atomic(data: bytes, path: Path | str) -> None:
    path = Path(path)
    fd, tmp = _tmp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: Path | str) -> None:
    write_bytes_atomic(text.encode(), path)


def write_csv_atomic(df, path: Path | str) -> None:
    write_text_atomic(df.to_csv(index=False), path)


def write_parquet_atomic(df, path: Path | str) -> None:
    path = Path(path)
    fd, tmp = _tmp_beside(path)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
