"""Label audit: each kind of evidence on small planted OOF tables (results/audit.py), the
contact sheet, the corrections file read back by core.corrections, and the stage's errors."""
import numpy as np
import pandas as pd
import pytest

from core.corrections import apply_corrections
from core.labels import IMAGE_KINDS
from results.audit import (CORRECTION_COLUMNS, SUSPECT_COLUMNS, AuditInputs, age_evidence, audit_suspects,
                           gender_evidence, guess_age, mask_image_evidence, person_predictions,
                           suggested_corrections, swap_evidence)
from results.contact_sheet import contact_sheet

KINDS = list(IMAGE_KINDS)


def _onehot(label: int, n: int, p: float) -> np.ndarray:
    out = np.full(n, (1 - p) / (n - 1))
    out[label] = p
    return out


def planted(persons: int = 10, conf: float = 0.9) -> tuple[pd.DataFrame, dict]:
    """Persons p00.. with 7 photos each; OOF predictions that agree with the labels (``conf``)."""
    rows = []
    for i in range(persons):
        age = [24, 41, 63][i % 3]
        for kind in KINDS:
            rows.append({"person": f"p{i:02d}", "path": f"train/images/p{i:02d}/{kind}.jpg", "kind": kind,
                         "mask": IMAGE_KINDS[kind], "gender": i % 2, "age": age})
    images = pd.DataFrame(rows)
    age_cls = np.where(images["age"] < 30, 0, np.where(images["age"] < 60, 1, 2))
    probs = {"mask": np.stack([_onehot(m, 3, conf) for m in images["mask"]]),
             "gender": np.stack([_onehot(g, 2, conf) for g in images["gender"]]),
             "age": np.stack([_onehot(a, 3, conf) for a in age_cls])}
    return images, probs


def rows_of(images, person, kind=None):
    m = images["person"] == person
    return np.flatnonzero(m if kind is None else m & (images["kind"] == kind))


def test_clean_labels_give_no_suspect():
    images, probs = planted()
    assert audit_suspects(AuditInputs(images, probs)).empty


def test_gender_flip_is_found_with_its_fix():
    images, probs = planted()
    images.loc[rows_of(images, "p03"), "gender"] = 0     # p03 is female in every photo, labelled male
    images.loc[rows_of(images, "p05"), "gender"] = 0     # weak evidence: 2 of 7 photos lean female
    idx = rows_of(images, "p05")
    probs["gender"][idx[:5]] = [0.8, 0.2]
    sus = gender_evidence(AuditInputs(images, probs))
    assert list(sus["person"]) == ["p03"]
    row = sus.iloc[0]
    assert row["label"] == "male" and row["suggestion"] == "female"
    assert row["score"] == pytest.approx(0.9) and "7/7 images predicted female" in row["evidence"]


def test_age_across_a_boundary_names_it_and_guesses_the_other_side():
    images, probs = planted()
    # p01 is 41 in the photos, labelled 27 (across 30); p02 is 63, labelled 52 (across 60)
    images.loc[rows_of(images, "p01"), "age"] = 27
    images.loc[rows_of(images, "p02"), "age"] = 52
    sus = age_evidence(AuditInputs(images, probs)).set_index("person")
    assert set(sus.index) == {"p01", "p02"}
    assert "older than 30" in sus.at["p01", "evidence"] and "older than 60" in sus.at["p02", "evidence"]
    assert 30 <= int(sus.at["p01", "suggestion"]) < 60 and int(sus.at["p02", "suggestion"]) >= 60
    assert "guess" in sus.at["p01", "note"]
    assert sus.at["p01", "score"] == pytest.approx(0.95)   # all the mass above 30


def test_age_guess_respects_a_moved_training_boundary():
    # models trained with old >= 59: a guess of 59 would be "old" in training, not in scoring
    assert guess_age(62, 1, old_from=59) == 57
    assert guess_age(60, 1, old_from=59) == 58
    assert guess_age(33, 0, old_from=60) == 26
    assert guess_age(27, 1, old_from=60) == 32
    assert guess_age(20, 2, old_from=60) >= 60


def test_incorrect_and_normal_swapped_within_a_person():
    images, probs = planted()
    a, b = rows_of(images, "p04", "incorrect_mask")[0], rows_of(images, "p04", "normal")[0]
    probs["mask"][[a, b]] = probs["mask"][[b, a]]        # each file shows the other's state
    sus = swap_evidence(AuditInputs(images, probs))
    assert list(sus["person"]) == ["p04"]
    assert sus.iloc[0]["suggestion"] == "incorrect_mask:normal" and sus.iloc[0]["score"] == pytest.approx(0.9)
    per_image = mask_image_evidence(AuditInputs(images, probs))
    assert set(per_image["image"]) == {"incorrect_mask", "normal"}


def test_a_mask_photo_that_shows_no_mask():
    images, probs = planted()
    m3 = rows_of(images, "p06", "mask3")[0]
    probs["mask"][m3] = [0.05, 0.05, 0.9]                # mask3 shows no mask; normal is fine
    img = mask_image_evidence(AuditInputs(images, probs))
    assert list(zip(img["person"], img["image"])) == [("p06", "mask3")]
    assert "not_wear" in img.iloc[0]["evidence"] and img.iloc[0]["label"] == "wear"
    assert swap_evidence(AuditInputs(images, probs)).empty   # one file alone is no swap
    n = rows_of(images, "p06", "normal")[0]
    probs["mask"][n] = [0.9, 0.05, 0.05]                 # ... and normal shows a mask: filed swapped
    sw = swap_evidence(AuditInputs(images, probs))
    assert sw.iloc[0]["suggestion"] == "mask3:normal"


def test_ranked_by_evidence_and_written_as_corrections(tmp_path):
    images, probs = planted()
    images.loc[rows_of(images, "p03"), "gender"] = 0
    probs["gender"][rows_of(images, "p03")] = [0.3, 0.7]   # weaker than the age evidence below
    images.loc[rows_of(images, "p01"), "age"] = 27
    a, b = rows_of(images, "p04", "incorrect_mask")[0], rows_of(images, "p04", "normal")[0]
    probs["mask"][[a, b]] = probs["mask"][[b, a]]
    inp = AuditInputs(images, probs)
    sus = audit_suspects(inp)
    assert tuple(sus.columns) == SUSPECT_COLUMNS
    assert list(sus["score"]) == sorted(sus["score"], reverse=True)
    assert sus.iloc[-1]["field"] == "gender"
    fixes = suggested_corrections(sus)
    assert tuple(fixes.columns) == CORRECTION_COLUMNS
    assert set(zip(fixes["id"], fixes["field"], fixes["value"])) == {
        ("p03", "gender", "female"), ("p01", "age", str(int(fixes.loc[fixes["field"] == "age", "value"].iloc[0]))),
        ("p04", "swap", "incorrect_mask:normal")}
    # the file is a valid --corrections file: it undoes the planted errors
    path = tmp_path / "corrections.csv"
    fixes.to_csv(path, index=False)
    fixed = apply_corrections(images, path)
    assert (fixed.loc[rows_of(images, "p03"), "gender"] == 1).all()
    assert (fixed.loc[rows_of(images, "p01"), "age"] >= 30).all()
    assert fixed.loc[a, "mask"] == 2 and fixed.loc[b, "mask"] == 1
    assert len(suggested_corrections(sus, min_score=0.8)) == 2    # the weak gender evidence drops out


def test_inputs_are_checked():
    images, probs = planted(2)
    with pytest.raises(ValueError, match="head age needs"):
        AuditInputs(images, {**probs, "age": probs["age"][:3]})
    with pytest.raises(ValueError, match="lack column"):
        AuditInputs(images.drop(columns="kind"), probs)


def test_contact_sheet_shows_the_top_persons(tmp_path):
    from PIL import Image
    images, probs = planted(4)
    images.loc[rows_of(images, "p03"), "gender"] = 0
    crop = tmp_path / "c.png"
    Image.new("RGB", (40, 40), (90, 120, 150)).save(crop)
    inp = AuditInputs(images, probs)
    out = contact_sheet(audit_suspects(inp), person_predictions(inp), lambda p: crop, tmp_path / "s.png")
    with Image.open(out) as im:
        assert im.width > 7 * 112 and 100 < im.height < 300      # one person's row
    assert contact_sheet(audit_suspects(AuditInputs(*planted(2))), person_predictions(inp),
                         lambda p: crop, tmp_path / "none.png") is None


def test_suggestions_per_field_are_capped_to_the_strongest():
    images, probs = planted(10)
    images["gender"] = 1 - images["gender"]                 # weak models: every person "suspect"
    probs["gender"] = np.where(probs["gender"] > 0.5, 0.6, 0.4)
    p03 = rows_of(images, "p03")
    probs["gender"][p03] = probs["gender"][p03] * 0 + np.where(probs["gender"][p03] == 0.6, 0.95, 0.05)
    sus = audit_suspects(AuditInputs(images, probs))
    assert (sus["field"] == "gender").sum() == 10
    fixes = suggested_corrections(sus, max_per_field=2)
    assert list(fixes["field"]) == ["gender", "gender"] and fixes["id"].iloc[0] == "p03"
