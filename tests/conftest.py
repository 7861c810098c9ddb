import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # tests must not write ~/.ray/auth_token
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Ray nodes and drivers use 127.0.0.1, not the machine's network address (tests/cluster/ starts
# multi-node clusters on this machine; nothing may listen beyond loopback)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parents[1]
UTKMASK = ROOT.parent / "shared" / "utkmask"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The built-in demo data set, made once per session (read-only for tests)."""
    from orchestrator.demo_data import DemoSpec, write_demo_data
    return write_demo_data(tmp_path_factory.mktemp("demo"), DemoSpec(train_persons=30, eval_persons=8))


@pytest.fixture
def demo_copy(demo_dir, tmp_path) -> Path:
    """A private copy of the demo data that a test may break."""
    return Path(shutil.copytree(demo_dir, tmp_path / "data"))


def utkmask_available() -> bool:
    return (UTKMASK / "make_utkmask.py").is_file() and (UTKMASK / "faces").is_dir()


@pytest.fixture(scope="session")
def utkmask_dir(tmp_path_factory) -> Path:
    """60 real persons laid out by ../shared/utkmask's own script (train and eval)."""
    if not utkmask_available():
        pytest.skip(f"real-face set not found at {UTKMASK} (needs ../shared/utkmask)")
    out = tmp_path_factory.mktemp("utkmask")
    persons = (UTKMASK / "persons.txt").read_text().splitlines()
    (out / "train.txt").write_text("\n".join(persons[:40]) + "\n")
    (out / "eval.txt").write_text("\n".join(persons[40:60]) + "\n")
    for split, lst in (("train", "train.txt"), ("eval", "eval.txt")):
        subprocess.run([sys.executable, str(UTKMASK / "make_utkmask.py"), split, str(UTKMASK / "faces"),
                        str(UTKMASK / "landmarks.csv"), str(out / lst), str(out / "data")],
                       check=True, capture_output=True)
    return out / "data"


@pytest.fixture(scope="session")
def crops_ws(demo_dir, tmp_path_factory):
    """(data_dir, Workspace) whose manifest + crops follow orchestrator/manifest.py.

    # TEMP until issue 3 lands: replace with orchestrator.preprocess.preprocess
    Plain PIL centre crops (no MTCNN), every row usable (error == "").
    """
    import pandas as pd
    from PIL import Image

    from orchestrator.dataset import load_eval, load_train
    from orchestrator.workspace import Workspace
    ws = Workspace(tmp_path_factory.mktemp("ws")).make()
    train, ev = load_train(demo_dir), load_eval(demo_dir)
    rows = []
    for split, df in (("train", train), ("eval", ev)):
        for r in df.to_dict("records"):
            with Image.open(demo_dir / r["path"]) as im:
                w, h = im.size
                s = min(w, h)
                box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
                crop = f"{split}/{r['path'].replace('/', '__')}.png"
                (ws.crops / crop).parent.mkdir(parents=True, exist_ok=True)
                im.convert("RGB").crop(box).resize((96, 96)).save(ws.crops / crop)
            labels = ({k: r[k] for k in ("kind", "mask", "gender", "age", "label")} if split == "train"
                      else {"kind": "", "mask": -1, "gender": -1, "age": -1, "label": -1})
            rows.append({"path": r["path"], "person": r.get("person", ""), "split": split,
                         "image_id": r.get("image_id", ""), **labels,
                         "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3], "prob": float("nan"),
                         "fallback": True, "error": "", "crop": crop})
    pd.DataFrame(rows).to_parquet(ws.manifest, index=False)
    return demo_dir, ws
