"""Label audit on planted errors (the goal: find wrong labels from out-of-fold evidence).

Plants label errors in a copy of the utkmask training persons (persons.txt lines 1-1000, laid
out by utkmask's own make_utkmask.py; eval persons lines 2001-3000 as benchmarks/quality.py):
gender flipped for 3% of the persons, age moved across the 30 or 60 boundary for 3%, and the
``incorrect_mask`` / ``normal`` files swapped for 2% (renamed in the layout, as a filing mistake
would). What was planted goes to WORK/planted.csv, outside the data set: the audit never sees it.

Arms, each a `python -m orchestrator run --budget B` in its own workspace, scored on the eval
persons (18-class macro F1):
  noisy      the noisy set                                   -> then `audit` on its workspace
  clean      the clean set
  corrected  the noisy set with the audit's corrections_suggested.csv (`run --corrections`)

  python benchmarks/audit.py --budget 23m                       # plant, every arm, report
  python benchmarks/audit.py --budget 23m --arms noisy clean    # some arms (the rest later)
  python benchmarks/audit.py --budget 23m --arms report         # only the report of what ran
  python benchmarks/audit.py --smoke                            # demo data, smoke runs (CI)

The report: per error type, precision and recall of the audit's ranked suspects at K = the
number planted; the eval macro F1 of every arm that ran; the top unplanted suspects.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import UTK, layout  # noqa: E402
from core.labels import COMPETITION_OLD_AGE, GENDERS, SEED, YOUNG_AGE_LIMIT, age_group  # noqa: E402
from results.scoring import score_submission  # noqa: E402

RATES = {"gender": 0.03, "age": 0.03, "swap": 0.02}   # share of training persons per planted error
SWAP = ("incorrect_mask", "normal")
ARMS = ("crops", "noisy", "clean", "audit", "corrected", "report")


# -- planting ----------------------------------------------------------------------------
def moved_age(age: int) -> int:
    """The age mirrored across the nearer of the 30 / 60 boundaries, kept 3 years clear of 59..60
    (a training boundary of 59 must see the move too) and within adult ages."""
    b = YOUNG_AGE_LIMIT if age < 45 else COMPETITION_OLD_AGE
    new = 2 * b - 1 - age
    groups = {0: (18, YOUNG_AGE_LIMIT - 1), 1: (YOUNG_AGE_LIMIT, COMPETITION_OLD_AGE - 3),
              2: (COMPETITION_OLD_AGE, 80)}
    lo, hi = groups[int(age_group(new))]
    return min(max(new, lo), hi)


def pick_persons(train: pd.DataFrame, seed: int, smoke: bool) -> dict[str, list[str]]:
    """Disjoint person sets per error type (a person carries at most one planted error). Age
    moves skip 59-year-olds: under a training boundary of 59 they are old on both sides of 60."""
    order = sorted(train["id"])
    random.Random(seed).shuffle(order)
    no_move = set(train.loc[train["age"].astype(int) == COMPETITION_OLD_AGE - 1, "id"])
    out, taken = {}, set()
    for field, rate in RATES.items():
        n = max(1, math.ceil(rate * len(order))) if smoke else round(rate * len(order))
        free = [p for p in order if p not in taken and not (field == "age" and p in no_move)]
        out[field] = free[:n]
        taken |= set(out[field])
    return out


def _swap_files(folder: Path) -> None:
    """incorrect_mask.X <-> normal.Y: each file keeps its extension, takes the other's name."""
    a, b = (next(folder.glob(f"{k}.*")) for k in SWAP)
    tmp = folder / f".swap{a.suffix}"
    a.rename(tmp)
    b.rename(folder / f"{SWAP[0]}{b.suffix}")
    tmp.rename(folder / f"{SWAP[1]}{a.suffix}")


def plant(clean: Path, noisy: Path, planted_csv: Path, seed: int = SEED, smoke: bool = False) -> pd.DataFrame:
    """A copy of ``clean`` (hard links) with planted label errors; the list goes to ``planted_csv``."""
    if (noisy / "train" / "train.csv").is_file() and planted_csv.is_file():
        return pd.read_csv(planted_csv, dtype=str)
    if noisy.exists():
        shutil.rmtree(noisy)
    shutil.copytree(clean, noisy, copy_function=os.link)
    csv = noisy / "train" / "train.csv"
    train = pd.read_csv(csv, dtype=str, keep_default_na=False)
    rows = []
    for field, persons in pick_persons(train, seed, smoke).items():
        for pid in persons:
            i = train.index[train["id"] == pid][0]
            if field == "gender":
                was = train.at[i, "gender"].strip().lower()
                now = next(g for g in GENDERS if g != was)
                train.at[i, "gender"] = now
            elif field == "age":
                was = train.at[i, "age"]
                now = str(moved_age(int(was)))
                train.at[i, "age"] = now
            else:
                _swap_files(noisy / "train" / "images" / train.at[i, "path"])
                was, now = ":".join(SWAP), ":".join(reversed(SWAP))
            rows.append({"person": pid, "field": field, "was": was, "now": now})
    csv.unlink()   # a hard link to the clean file: write a new one, never through the link
    train.to_csv(csv, index=False)
    planted = pd.DataFrame(rows)
    planted.to_csv(planted_csv, index=False)
    return planted.astype(str)


# -- arms --------------------------------------------------------------------------------
def make_crops(data: Path, ws: Path, log: Path) -> None:
    """Face crops of the noisy set, made once: every arm starts from them (see seed_crops)."""
    if (ws / "crops" / "manifest.parquet").is_file():
        return
    cmd = [sys.executable, "-m", "orchestrator", "preprocess", "--data", str(data), "--workspace", str(ws),
           "--no-progress"]
    print("$", " ".join(cmd), f"> {log}", flush=True)
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def seed_crops(src: Path, ws: Path) -> None:
    """Hard-link the crop cache into a new arm's workspace. The cache is keyed by each source
    file's size, mtime and content, so an arm re-crops only the files that differ (the swapped
    ones in the clean set) and no arm spends its budget cropping 14,000 images again."""
    if (src / "crops").is_dir() and not (ws / "crops").exists():
        ws.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / "crops", ws / "crops", copy_function=os.link)


def run_arm(data: Path, ws: Path, budget: str | None, extra: list[str], log: Path) -> dict:
    """`run` on ``data`` into ``ws`` (a finished arm is not rerun), scored on the eval persons."""
    sub = ws / "results" / "submission.csv"
    wall = None
    if not sub.is_file():
        cmd = [sys.executable, "-m", "orchestrator", "run", "--data", str(data), "--workspace", str(ws),
               *(["--budget", budget] if budget else ["--smoke-test"]), *extra]
        print("$", " ".join(cmd), f"> {log}", flush=True)
        t0 = time.time()
        with open(log, "w") as f:
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        wall = time.time() - t0
    s = score_submission(sub, data / "eval" / "answers.csv")
    return {"wall_s": None if wall is None else round(wall, 1), "load_avg": os.getloadavg()[0],
            **{k: round(v, 4) for k, v in s.items()}}


def run_audit(data: Path, ws: Path, log: Path) -> Path:
    out = ws / "results" / "audit" / "run-all"   # the study `run` trains
    cmd = [sys.executable, "-m", "orchestrator", "audit", "--data", str(data), "--workspace", str(ws)]
    print("$", " ".join(cmd), f"> {log}", flush=True)
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    return out


# -- scoring the audit -------------------------------------------------------------------
def _found(suspects: pd.DataFrame, field: str) -> pd.DataFrame:
    """The audit's ranked person-level suspects of one planted error type."""
    s = suspects[suspects["field"] == field]
    if field == "swap":
        s = s[s["suggestion"].isin([":".join(SWAP), ":".join(reversed(SWAP))])]
    return s.sort_values("score", ascending=False).drop_duplicates("person")


def precision_recall(suspects: pd.DataFrame, planted: pd.DataFrame) -> dict[str, dict]:
    """Per error type: precision and recall of the top K suspects, K = the number planted; where
    each planted person ranks among that type's suspects (0 = first), and recall at 2K."""
    out = {}
    for field in RATES:
        truth = set(planted.loc[planted["field"] == field, "person"])
        k = len(truth)
        ranked = _found(suspects, field).reset_index(drop=True)
        top = ranked.head(k)
        hits = len(set(top["person"]) & truth)
        out[field] = {"planted": k, "listed": len(top), "hits": hits,
                      "precision": round(hits / len(top), 3) if len(top) else float("nan"),
                      "recall": round(hits / k, 3) if k else float("nan"),
                      "recall_at_2k": round(len(set(ranked.head(2 * k)["person"]) & truth) / k, 3) if k else float("nan"),
                      "suspects": len(ranked), "planted_ranks": ranked.index[ranked["person"].isin(truth)].tolist()}
    return out


def suggestions_score(suggested: pd.DataFrame, planted: pd.DataFrame) -> dict:
    """How many of the suggested corrections undo a planted error (the file (b) applies)."""
    key = set(zip(planted["person"], planted["field"]))
    hit = [(str(r.id), r.field) in key for r in suggested.itertuples()]
    return {"suggested": len(suggested), "undo_planted": int(sum(hit)), "planted": len(planted)}


def unplanted(suspects: pd.DataFrame, planted: pd.DataFrame, n: int = 8) -> pd.DataFrame:
    """The strongest suspects that no planted error explains. A swapped person's photo-level
    ``mask`` suspects are the same filing mistake seen one file at a time: planted too."""
    key = set(zip(planted["person"], planted["field"]))
    key |= {(p, "mask") for p, f in key if f == "swap"}
    mask = [(p, f) not in key for p, f in zip(suspects["person"].astype(str), suspects["field"])]
    return suspects[mask].head(n)


# -- main --------------------------------------------------------------------------------
SMOKE_PERSONS = (12, 3)   # --smoke: demo persons in train and eval (one of each error type is planted)


def clean_data(work: Path, smoke: bool) -> Path:
    if smoke:
        from core.demo_data import DemoSpec, write_demo_data
        data = work / "demo-clean"
        if not (data / "train" / "train.csv").is_file():
            write_demo_data(data, DemoSpec(*SMOKE_PERSONS))
        return data
    if not (UTK / "make_utkmask.py").is_file():
        sys.exit(f"needs the real-face set at {UTK} (or use --smoke)")
    return layout(work, 1000, 2001, 3000)


def report(work: Path, planted: pd.DataFrame) -> dict:
    out = {"arms": {}}
    for arm in ("noisy", "corrected", "clean"):
        f = work / f"arm-{arm}.json"
        if f.is_file():
            out["arms"][arm] = json.loads(f.read_text())
    audit_dir = work / "ws-noisy" / "results" / "audit" / "run-all"
    if (audit_dir / "suspects.csv").is_file():
        suspects = pd.read_csv(audit_dir / "suspects.csv", dtype={"person": str}, keep_default_na=False)
        suggested = pd.read_csv(audit_dir / "corrections_suggested.csv", dtype={"id": str}, keep_default_na=False)
        out["precision_recall_at_k"] = precision_recall(suspects, planted)
        out["suggestions"] = suggestions_score(suggested, planted)
        out["top_unplanted"] = unplanted(suspects, planted).to_dict("records")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="23m", help="run --budget of every arm (ignored with --smoke)")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="what to do (default: all, in order)")
    ap.add_argument("--smoke", action="store_true", help="demo data and `run --smoke-test` (seconds to a minute each)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "audit")
    a = ap.parse_args(argv)
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    clean = clean_data(work, a.smoke)
    noisy = work / "noisy"
    planted = plant(clean, noisy, work / "planted.csv", smoke=a.smoke)
    print(f"planted: {planted.groupby('field').size().to_dict()} (list in {work / 'planted.csv'})", flush=True)
    budget = None if a.smoke else a.budget
    suggested = work / "ws-noisy" / "results" / "audit" / "run-all" / "corrections_suggested.csv"
    for arm in [x for x in ARMS if x in a.arms and x != "report"]:
        log = work / f"{arm}.log"
        if arm == "crops":
            make_crops(noisy, work / "ws-crops", log)
            continue
        if arm == "audit":
            run_audit(noisy, work / "ws-noisy", log)
            # the workspace of (b) records its corrections file: keep a copy the audit never rewrites
            shutil.copy(suggested, work / "corrections_suggested.csv")
            continue
        data = clean if arm == "clean" else noisy
        extra = ["--corrections", str(work / "corrections_suggested.csv")] if arm == "corrected" else []
        seed_crops(work / "ws-crops", work / f"ws-{arm}")
        res = run_arm(data, work / f"ws-{arm}", budget, extra, log)
        (work / f"arm-{arm}.json").write_text(json.dumps({"budget": budget or "smoke", **res}))
        print(f"{arm}: {res}", flush=True)
    out = report(work, planted)
    print(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
