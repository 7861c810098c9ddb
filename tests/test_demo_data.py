import pandas as pd
from PIL import Image

from core.dataset import load_eval, load_train
from core.demo_data import DemoSpec, write_demo_data
from core.labels import IMAGE_KINDS


def test_layout_and_labels_match_folders(demo_dir):
    train = load_train(demo_dir)
    assert len(train) == 30 * 7 and train["person"].nunique() == 30
    people = pd.read_csv(demo_dir / "train" / "train.csv", dtype={"id": str})
    for _, p in people.iterrows():
        assert p["path"] == f"{p['id']}_{p['gender']}_Asian_{p['age']}"
        rows = train[train["person"] == p["id"]]
        assert set(rows["kind"]) == set(IMAGE_KINDS)
        assert (rows["age"] == p["age"]).all()
    ev = load_eval(demo_dir)
    answers = pd.read_csv(demo_dir / "eval" / "answers.csv")
    assert list(ev["image_id"]) == list(answers["ImageID"]) and len(ev) == 8 * 7
    assert answers["ans"].between(0, 17).all()
    with Image.open(demo_dir / train["path"].iloc[0]) as im:
        assert im.size == (192, 256) and im.mode == "RGB"


def test_deterministic(tmp_path):
    a = write_demo_data(tmp_path / "a", DemoSpec(3, 1, seed=5))
    b = write_demo_data(tmp_path / "b", DemoSpec(3, 1, seed=5))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_cues_differ_by_mask_state(demo_dir):
    """Wear / incorrect / normal differ in the lower face, where the mask is drawn."""
    import numpy as np
    folder = next((demo_dir / "train" / "images").iterdir())
    lower = {k: np.asarray(Image.open(folder / f"{k}.jpg"), dtype=float)[130:170, 60:130].mean(axis=(0, 1))
             for k in ("mask1", "incorrect_mask", "normal")}
    assert np.abs(lower["mask1"] - lower["normal"]).sum() > 10 or np.abs(lower["incorrect_mask"] - lower["normal"]).sum() > 10
