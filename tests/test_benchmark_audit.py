"""benchmarks/audit.py: planting label errors in a copy of a data set, and its smoke mode end to
end (plant, crops, `run --smoke-test` on the noisy set, `audit`, precision/recall at K)."""
import json
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.audit import RATES, SMOKE_PERSONS, main, moved_age, plant, precision_recall, unplanted  # noqa: E402
from core.labels import age_group  # noqa: E402
from results.scoring import score_submission  # noqa: E402


def test_moved_age_crosses_a_boundary_clear_of_59():
    for age in [a for a in range(18, 70) if a != 59]:   # 59 is never moved (see pick_persons)
        new = moved_age(age)
        assert age_group(new) != age_group(age), (age, new)
        assert age_group(new, 59) != age_group(age, 59), (age, new)   # a training boundary of 59 sees it


def test_plant_changes_the_copy_only(demo_dir, tmp_path):
    clean_csv = (demo_dir / "train" / "train.csv").read_bytes()
    planted = plant(demo_dir, tmp_path / "noisy", tmp_path / "planted.csv", smoke=True)
    assert (demo_dir / "train" / "train.csv").read_bytes() == clean_csv
    assert sorted(planted["field"]) == sorted(RATES) and planted["person"].is_unique
    noisy = pd.read_csv(tmp_path / "noisy" / "train" / "train.csv", dtype=str).set_index("id")
    clean = pd.read_csv(demo_dir / "train" / "train.csv", dtype=str).set_index("id")
    for r in planted.itertuples():
        folder = noisy.at[r.person, "path"]
        if r.field == "swap":
            for a, b in (("incorrect_mask", "normal"), ("normal", "incorrect_mask")):
                new = next((tmp_path / "noisy" / "train" / "images" / folder).glob(f"{a}.*")).read_bytes()
                assert new == next((demo_dir / "train" / "images" / folder).glob(f"{b}.*")).read_bytes()
        else:
            assert noisy.at[r.person, r.field] == r.now != clean.at[r.person, r.field] == r.was
    changed = (noisy[["gender", "age"]] != clean[["gender", "age"]]).any(axis=1)
    assert set(noisy.index[changed]) == set(planted.loc[planted["field"] != "swap", "person"])


def test_scoring_counts_a_swapped_persons_photo_suspects_as_planted():
    planted = pd.DataFrame({"person": ["1", "2"], "field": ["swap", "gender"]})
    suspects = pd.DataFrame({"person": ["1", "1", "3", "2", "4"], "field": ["mask", "swap", "swap", "gender", "gender"],
                             "suggestion": ["", "incorrect_mask:normal", "incorrect_mask:normal", "male", "male"],
                             "score": [0.99, 0.9, 0.8, 0.7, 0.95]})
    assert unplanted(suspects, planted)["person"].tolist() == ["3", "4"]
    pr = precision_recall(suspects, planted)
    sw = pr["swap"]
    assert (sw["hits"], sw["precision"], sw["planted_ranks"], sw["recall_at_2k"]) == (1, 1.0, [0], 1.0)
    assert pr["gender"]["hits"] == 0 and pr["gender"]["planted_ranks"] == [1] and pr["gender"]["recall_at_2k"] == 1.0


def test_smoke_mode_plants_runs_audits_and_scores(tmp_path):
    out = main(["--smoke", "--arms", "crops", "noisy", "audit", "report", "--work", str(tmp_path)])
    assert set(out["precision_recall_at_k"]) == set(RATES)
    for field, pr in out["precision_recall_at_k"].items():   # hits and recall agree with the ranks found
        assert pr["planted"] == 1 and pr["hits"] == sum(r < 1 for r in pr["planted_ranks"]) == pr["recall"], pr
    # the arm's F1 is its submission's, scored against the eval answers
    scored = score_submission(tmp_path / "ws-noisy" / "results" / "submission.csv", tmp_path / "noisy" / "eval" / "answers.csv")
    assert out["arms"]["noisy"]["f1"] == round(scored["f1"], 4) and out["arms"]["noisy"]["wall_s"] > 0
    assert (tmp_path / "ws-noisy" / "results" / "audit" / "run-all" / "suspects.png").is_file() or \
        out["suggestions"]["suggested"] == 0
    assert json.loads((tmp_path / "arm-noisy.json").read_text())["budget"] == "smoke"
    # the arm started from the shared crops (hard links), and (b)'s corrections file is kept apart
    cached = re.search(r"; (\d+) cached", (tmp_path / "noisy.log").read_text())
    assert cached and int(cached[1]) == sum(SMOKE_PERSONS) * 7   # every train and eval image
    assert (tmp_path / "corrections_suggested.csv").is_file()
