"""Face cropping: the recipe's serial MTCNN loop vs `preprocess` on Ray, side by side.

    PYTHONPATH=. python benchmarks/preprocess.py [--persons 50] [--eval-persons 20] [--levers]
    PYTHONPATH=. python benchmarks/preprocess.py --smoke    # 3 + 1 demo persons, no face boxes (the tests run it)

Real faces from the real-face set ($UTKMASK_DIR, benchmarks/realfaces.py; made with its own script into benchmarks/_work/). Prints the
throughput of both, their ratio, and crop quality: the share of crops whose box has IoU >= 0.5
with the true face box (boxes.csv). --levers also times each speed/quality lever on its own;
--memory also samples the peak resident memory of the whole process tree (driver, raylet, workers).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.realfaces import utkmask_folder  # noqa: E402
from core.faces import CropSettings, centre_box, iou  # noqa: E402

UTK = utkmask_folder()   # $UTKMASK_DIR (benchmarks/realfaces.py)
WORK = ROOT / "benchmarks" / "_work"


def make_data(persons: int, eval_persons: int) -> Path:
    out = WORK / f"utk-{persons}-{eval_persons}"
    if (out / "eval" / "boxes.csv").is_file():
        return out
    names = (UTK / "persons.txt").read_text().splitlines()
    out.mkdir(parents=True, exist_ok=True)
    for split, chosen in (("train", names[:persons]), ("eval", names[persons:persons + eval_persons])):
        lst = out / f"{split}.txt"
        lst.write_text("\n".join(chosen) + "\n")
        subprocess.run([sys.executable, str(UTK / "make_utkmask.py"), split, str(UTK / "faces"),
                        str(UTK / "landmarks.csv"), str(lst), str(out)], check=True)
    return out


def smoke_data(persons: int, eval_persons: int) -> Path:
    """The built-in demo data (drawn faces, no true face boxes: crop quality reads NaN)."""
    from core.demo_data import DemoSpec, write_demo_data
    return write_demo_data(WORK / f"demo-{persons}-{eval_persons}", DemoSpec(persons, eval_persons))


def truth(data: Path) -> pd.DataFrame:
    """Every image (path, split) with its true face box (NaN without boxes.csv: demo data)."""
    if not (data / "eval" / "boxes.csv").is_file():
        from core.dataset import load_eval, load_train
        return pd.concat([load_train(data)[["path"]].assign(split="train"),
                          load_eval(data)[["path"]].assign(split="eval")], ignore_index=True).assign(
            x1=float("nan"), y1=float("nan"), x2=float("nan"), y2=float("nan"))
    return pd.concat([pd.read_csv(data / s / "boxes.csv")
                      .assign(split=s, path=lambda d, s=s: f"{s}/images/" + d["image"])
                      for s in ("train", "eval")], ignore_index=True)


def quality(boxes: pd.DataFrame, data: Path) -> dict:
    """Share of crop boxes with IoU >= 0.5 against the true face box, overall and per split."""
    j = boxes.merge(truth(data), on="path", suffixes=("", "_t"))
    if j["x1_t"].isna().all():
        return {"all": float("nan"), "train": float("nan"), "eval": float("nan")}
    ok = [iou((r.x1, r.y1, r.x2, r.y2), (r.x1_t, r.y1_t, r.x2_t, r.y2_t)) >= 0.5 for r in j.itertuples()]
    j["ok"] = ok
    return {"all": j["ok"].mean(), **j.groupby("split")["ok"].mean().to_dict()}


def serial_recipe(data: Path, out: Path, threads: int | None) -> tuple[float, float, pd.DataFrame]:
    """The recipe: default MTCNN on one PIL image at a time, 300x300 centre crop on a miss.
    Returns (wall s, CPU s, boxes); threads None keeps torch's default (one per core)."""
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    mtcnn = MTCNN()
    paths = truth(data)["path"].tolist()
    rows, t0, c0 = [], time.time(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        img = Image.open(data / p).convert("RGB")
        boxes, _ = mtcnn.detect(img)
        box = tuple(boxes[0]) if boxes is not None else centre_box(*img.size, 300 / 384)
        img.crop(tuple(int(v) for v in box)).resize((224, 224)).save(out / f"{i}.jpg", quality=95)
        rows.append((p, *box))
    wall, cpu = time.time() - t0, time.process_time() - c0
    torch.set_num_threads(default_threads)
    return wall, cpu, pd.DataFrame(rows, columns=["path", "x1", "y1", "x2", "y2"])


class PeakRSS:
    """Peak summed RSS of this process and all its descendants (Linux /proc), sampled."""

    def __init__(self, every: float = 0.2):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(self.every)


def tree(root: int) -> list[int]:
    """root and all its descendants (Ray's raylet, GCS and workers descend from the driver)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    keep, frontier = {root}, {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in keep}
        keep |= frontier
    return sorted(keep)


def tree_rss(root: int) -> int:
    """Summed PSS (shared pages split between their users, so libtorch is not counted twice)."""
    total = 0
    for pid in tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by root and its live descendants."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in tree(root):
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_command(data: Path, ws_dir: Path, s: CropSettings, workers: int | None):
    """(wall s, CPU s of driver + Ray + workers, manifest) of one fresh run."""
    from core.workspace import Workspace
    from orchestrator.stages.preprocess import preprocess
    shutil.rmtree(ws_dir, ignore_errors=True)
    t0, c0 = time.time(), tree_cpu(os.getpid())
    m = preprocess(data, Workspace(ws_dir), s, workers=workers, progress=False)
    return time.time() - t0, tree_cpu(os.getpid()) - c0, m


NO_WEAK = 2.0   # weak_min_prob above any probability: no below-threshold face is kept
LEVERS = [  # (name, settings): each adds one lever to the one above
    ("recipe settings on Ray", CropSettings(detect_scale=1.0, min_face_size=20, fallback="centre",
                                            prob_threshold=0.0)),
    ("+ detect on 1/3-size copy", CropSettings(min_face_size=20, fallback="centre", prob_threshold=0.0)),
    ("+ min_face_size 160", CropSettings(fallback="centre", prob_threshold=0.0)),
    ("+ prior fallback (global)", CropSettings(person_prior=False, prob_threshold=0.0)),
    ("+ prob threshold 0.9", CropSettings(person_prior=False, weak_min_prob=NO_WEAK)),
    ("+ weak faces near the prior", CropSettings(person_prior=False)),
    ("+ person prior k=10 (default)", CropSettings()),
    ("+ second pass (off by default)", CropSettings(second_pass=True)),
]


def detector_levers(data: Path) -> None:
    """In one process, one thread: MTCNN batch size and channels-last, on the same 1/3-size images."""
    import torch
    from facenet_pytorch import MTCNN

    from serving.detector import decode
    torch.set_num_threads(1)
    imgs = [decode(data / p).img.reduce(3) for p in truth(data)["path"][:128]]
    for name, cl, bs in (("NCHW, 1 image a call", False, 1), ("NCHW, 32 a call", False, 32),
                         ("channels-last, 1 a call", True, 1), ("channels-last, 32 a call", True, 32)):
        m = MTCNN(min_face_size=53)   # 160 source px at 1/3 size
        if cl:
            for n in ("pnet", "rnet", "onet"):
                setattr(m, n, getattr(m, n).to(memory_format=torch.channels_last))
        t0 = time.process_time()
        for i in range(0, len(imgs), bs):
            m.detect(imgs[i:i + bs] if bs > 1 else imgs[i])
        print(f"  detector {name:26s} {(time.process_time() - t0) / len(imgs) * 1000:6.1f} CPU ms/image")


def report(name: str, n: int, wall: float, cpu: float, q: dict) -> None:
    print(f"{name:34s} {n / wall:6.1f} images/s wall, {cpu / n * 1000:6.1f} CPU ms/image; "
          f"crops on face {q['all']:.1%} (train {q['train']:.1%}, eval {q['eval']:.1%})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=50)
    ap.add_argument("--eval-persons", type=int, default=20)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--levers", action="store_true", help="also time each lever on its own")
    ap.add_argument("--memory", action="store_true", help="only the Ray run, sampling peak PSS")
    ap.add_argument("--repeat", type=int, default=1,
                    help="best of this many serial loops and warm runs (other jobs add noise)")
    ap.add_argument("--serial-threads", default="1",
                    help="torch threads of the serial loop, comma-separated; 0 = torch's default (one "
                         "per core), which crawls when other processes share the cores")
    ap.add_argument("--smoke", action="store_true", help="3 + 1 demo persons in a temporary folder, "
                    "no crop quality: seconds, for the test suite")
    a = ap.parse_args()
    if a.smoke:
        global WORK
        with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
            WORK, a.persons, a.eval_persons = Path(tmp), 3, 1
            return measure(a, smoke_data(a.persons, a.eval_persons))
    if not (UTK / "make_utkmask.py").is_file():
        sys.exit(f"needs the real-face set at {UTK} (set $UTKMASK_DIR)")
    measure(a, make_data(a.persons, a.eval_persons))


def measure(a, data: Path) -> None:
    n = len(truth(data))
    cores = os.cpu_count()
    print(f"{n} images ({a.persons} train + {a.eval_persons} eval persons); {cores} cores; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    if a.memory:
        return memory_run(data, n, a.workers)
    serial, serial_cpu = [], 0.0
    for threads in (int(t) for t in a.serial_threads.split(",")):
        wall, cpu, boxes = min((serial_recipe(data, WORK / "serial-crops", threads or None)
                                for _ in range(a.repeat)), key=lambda r: r[0])
        serial.append(wall)
        serial_cpu = cpu if threads == 1 else serial_cpu
        report(f"serial recipe loop, {threads or 'default'} thread(s)", n, wall, cpu, quality(boxes, data))
    from orchestrator.infra.ray_session import init_ray
    t0 = time.time()
    init_ray(None)
    t_init = time.time() - t0
    cold, cold_cpu, m = run_command(data, WORK / "ws-cold", CropSettings(), a.workers)
    report("preprocess, cold (workers start)", n, cold, cold_cpu, quality(m, data))
    warm, warm_cpu, m = min((run_command(data, WORK / "ws-warm", CropSettings(), a.workers)
                             for _ in range(a.repeat)), key=lambda r: r[0])
    report("preprocess, warm", n, warm, warm_cpu, quality(m, data))
    print(f"  {m.attrs['summary'].line()}")
    best = min(serial)
    print(f"throughput ratio vs the faster serial loop: {best / warm:.1f}x warm, {best / cold:.1f}x "
          f"cold, {best / (cold + t_init):.1f}x cold incl. ray.init ({t_init:.1f} s); "
          f"load average after: {os.getloadavg()[0]:.1f}")
    # other processes share the cores, so also the ratio of CPU cost: on an idle machine the
    # 1-thread loop runs at 1 / its CPU time, the command at most at cores / its CPU time
    print(f"CPU-time ratio (1-thread loop CPU / command CPU, x {cores} cores): "
          f"{serial_cpu / warm_cpu * cores:.1f}x")
    if a.levers:
        detector_levers(data)
        for name, cs in LEVERS:
            wall, cpu, m = run_command(data, WORK / "ws-lever", cs, a.workers)
            report("  " + name, n, wall, cpu, quality(m, data))
        for w in (1, 2):
            wall, cpu, m = run_command(data, WORK / "ws-lever", CropSettings(), w)
            report(f"  default, {w} worker(s)", n, wall, cpu, quality(m, data))


def memory_run(data: Path, n: int, workers: int | None) -> None:
    from orchestrator.infra.ray_session import init_ray
    with PeakRSS() as mem:
        init_ray(None)
        wall, cpu, m = run_command(data, WORK / "ws-mem", CropSettings(), workers)
    report("preprocess, cold", n, wall, cpu, quality(m, data))
    print(f"peak memory (PSS of driver + Ray + workers): {mem.peak / 2**30:.2f} GiB for {n} images")


if __name__ == "__main__":
    main()
