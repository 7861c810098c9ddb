"""Loads real faces laid out by the real-face set's own script ($UTKMASK_DIR; skipped where absent)."""
import pandas as pd

from core.dataset import load_eval, load_train
from core.folds import FoldSpec, assign_folds


def test_load_real_faces(utkmask_dir):
    train = load_train(utkmask_dir)
    assert train["person"].nunique() == 40 and len(train) == 280
    assert train["age"].between(18, 69).all()
    ev = load_eval(utkmask_dir)
    answers = pd.read_csv(utkmask_dir / "eval" / "answers.csv")
    assert len(ev) == 140 and list(ev["image_id"]) == list(answers["ImageID"])
    folds = assign_folds(train, FoldSpec(k=5))
    assert (train.assign(fold=folds).groupby("person")["fold"].nunique() == 1).all()


def test_parallel_layout_is_the_scripts_own_byte_for_byte(utkmask_dir, tmp_path):
    """benchmarks/gpu/utk_layout.py (what the GPU check makes its data with) writes exactly the
    files make_utkmask.py wrote for the session's 40 + 20 persons."""
    import hashlib

    from benchmarks.gpu.utk_layout import layout
    from conftest import UTKMASK
    persons = (UTKMASK / "persons.txt").read_text().splitlines()
    out = layout(UTKMASK, persons[:40], persons[40:60], tmp_path / "data", jobs=2)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    assert digest(out) == digest(utkmask_dir)
