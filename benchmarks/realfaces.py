"""Where the real-face set lies (UTKFace photos with masks drawn on, laid out by its own
make_utkmask.py): $UTKMASK_DIR, else ``../shared/utkmask`` beside the repository. The tests that
need it skip where it is absent; the benchmarks that need it say so and stop."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = "UTKMASK_DIR"
DEFAULT = ROOT.parent / "shared" / "utkmask"


def utkmask_folder() -> Path:
    """The real-face set's folder: $UTKMASK_DIR where set, else the default beside the repository."""
    return Path(os.environ.get(ENV) or DEFAULT).resolve()


def utkmask_available(folder: Path | None = None) -> bool:
    folder = folder or utkmask_folder()
    return (folder / "make_utkmask.py").is_file() and (folder / "faces").is_dir()
