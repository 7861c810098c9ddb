"""Generated bad input (Hypothesis) over every file a user hands the orchestrator.

Each generated file ends in exactly one outcome: accepted and loaded as the oracle says, a
warning, or one DataError whose problems name the file and exactly the lines the oracle expects;
never a traceback, never a partial write (tests/bad_input.py counts them per kind). The default
profile (tests/conftest.py) is seeded and bounded; `--hypothesis-profile long` is the sweep
whose counts are in benchmarks/README.md. Every bug they found is kept as an @example.
"""
from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.csv_input import MAX_AGE
from core.dataset import EVAL_COLUMNS, TRAIN_COLUMNS, load_eval, load_train
from core.errors import DataError
from core.labels import GENDERS, IMAGE_KINDS
from tests.bad_input import attempt
from tests.csv_cases import ODD_TEXT, ages, genders, header_broken, ids, layout, mostly, padded, problem_lines, render


def examples(share: float) -> settings:
    """This test's share of the profile's example count: cheap inputs get more cases."""
    return settings(max_examples=max(5, round(settings.default.max_examples * share)))


ALL_KINDS = tuple(IMAGE_KINDS)
EXTS = (".jpg", ".JPG", ".jpeg", ".png")
PATHS = ("ok", "dot", "slash", "dotdot", "absolute", "link_out", "missing", "empty", "shared")
OUT_OF_DATA = ("dotdot", "absolute", "link_out")


def _age_ok(text: str) -> int | None:
    t = text.strip()
    if not re.fullmatch(r"[0-9]+(\.0*)?", t, flags=re.ASCII) or int(t.split(".")[0]) > MAX_AGE:
        return None
    return int(t.split(".")[0])


def _outside(tmp: Path) -> Path:
    """A folder beside DATA holding a whole person: a path that leads there must not be read."""
    out = tmp / "outside"
    out.mkdir()
    for k in ALL_KINDS:
        (out / f"{k}.jpg").write_bytes(b"")
    return out


@st.composite
def persons(draw) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(0, 4) if draw(st.integers(0, 19)) == 0 else st.integers(1, 4))):
        kinds = draw(mostly(st.just(ALL_KINDS), st.lists(st.sampled_from(ALL_KINDS), unique=True)))
        how = draw(mostly(st.just("ok"), st.sampled_from(PATHS)))
        if how == "shared" and not (rows and rows[0]["how"] in ("ok", "dot", "slash")):
            how = "ok"   # "shared": the folder row 0 holds already
        rows.append({"id": draw(ids()), "gender": draw(genders()), "age": draw(ages()), "race": draw(ODD_TEXT),
                     "how": how,
                     "kinds": {k: draw(st.sampled_from(EXTS)) for k in kinds},
                     "extra": draw(mostly(st.just(""), st.sampled_from(["stray", "twin", "hidden", "link"])))})
    return rows


def _write_person(root: Path, i: int, p: dict, outside: Path) -> str:
    """Lay out person ``i``'s folder p{i} under train/images; returns its path cell."""
    folder = root / f"p{i}"
    folder.mkdir(parents=True)
    for k, ext in p["kinds"].items():
        (folder / f"{k}{ext}").write_bytes(b"")
    twin = "mask1.jpeg" if p["kinds"].get("mask1") != ".jpeg" else "mask1.png"   # mask1 a second time
    extra = {"stray": "notes.txt", "twin": twin, "hidden": "._mask1.jpg"}.get(p["extra"])
    if extra and (p["extra"] != "twin" or "mask1" in p["kinds"]):
        (folder / extra).write_bytes(b"")
    if p["extra"] == "link":
        os.symlink(outside / "normal.jpg", folder / "link.jpg")
    if p["how"] == "link_out":
        os.symlink(outside, root / f"link{i}")
    return {"ok": f"p{i}", "dot": f"./p{i}", "slash": f"p{i}/", "dotdot": "../../../outside",
            "absolute": str(outside), "link_out": f"link{i}", "missing": f"missing{i}", "empty": "",
            "shared": "p0"}[p["how"]]


def _expect(people: list[dict]) -> tuple[set[int], bool]:
    """(lines with a problem, whether a warning is due) as the data contract says."""
    bad, warn, seen = set(), False, set()
    for i, p in enumerate(people):
        line, pid = i + 2, p["id"].strip()
        if not pid or pid in seen or p["gender"].strip().lower() not in GENDERS or _age_ok(p["age"]) is None:
            bad.add(line)
        seen.add(pid)
        twin = p["extra"] == "twin" and "mask1" in p["kinds"]
        if p["how"] in OUT_OF_DATA + ("missing", "empty", "shared") or not p["kinds"] or twin or p["extra"] == "link":
            bad.add(line)
        warn |= 0 < len(p["kinds"]) < len(ALL_KINDS) or p["extra"] == "stray" or "." in p["age"].strip()
    return bad, warn


def _check_loaded(table, people: list[dict]) -> None:
    assert len(table) == sum(len(p["kinds"]) for p in people)
    for i, p in enumerate(people):
        rows = table[table["path"].str.startswith(f"train/images/p{i}/")]
        assert set(rows["person"]) == {p["id"].strip()}
        assert set(rows["path"]) == {f"train/images/p{i}/{k}{ext}" for k, ext in p["kinds"].items()}
        assert set(rows["gender"]) == {GENDERS[p["gender"].strip().lower()]}
        assert set(rows["age"]) == {_age_ok(p["age"])}
        assert {IMAGE_KINDS[k] for k in rows["kind"]} == set(rows["mask"])


@examples(1)
@given(people=persons(), lay=layout(TRAIN_COLUMNS))
@example(   # a path out of DATA was read without a word
    people=[{"id": "1", "gender": "male", "age": "30", "race": "", "how": "dotdot", "kinds": {"mask1": ".jpg"},
             "extra": ""}],
    lay={"columns": list(TRAIN_COLUMNS), "names": {c: c for c in TRAIN_COLUMNS}, "dropped": None, "twin": None,
         "bom": False, "crlf": False, "quote_all": False})
@example(   # an age of '²' passed str.isdigit() and crashed int(); a 23-digit age overflowed int64
    people=[{"id": "1", "gender": "male", "age": "\u00b2", "race": "", "how": "ok", "kinds": {"mask1": ".jpg"},
             "extra": ""},
            {"id": "2", "gender": "male", "age": "99999999999999999999999", "race": "", "how": "ok",
             "kinds": {"mask1": ".jpg"}, "extra": ""}],
    lay={"columns": list(TRAIN_COLUMNS), "names": {c: c for c in TRAIN_COLUMNS}, "dropped": None, "twin": None,
         "bom": False, "crlf": False, "quote_all": False})
@example(people=[], lay={"columns": list(TRAIN_COLUMNS), "names": {c: c for c in TRAIN_COLUMNS},   # header only
                         "dropped": None, "twin": None, "bom": True, "crlf": True, "quote_all": True})
def test_train_csv(people, lay):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, outside = tmp / "data", _outside(tmp)
        root = data / "train" / "images"
        root.mkdir(parents=True)
        cells = [dict(p, path=_write_person(root, i, p, outside)) for i, p in enumerate(people)]
        csv_path = data / "train" / "train.csv"
        csv_path.write_bytes(render(lay, cells))
        out = attempt("train.csv", lambda: load_train(data), refusals=(DataError,), watch=[data])
        bad, warn = _expect(people)
        if header_broken(lay) or not people:
            assert out.name == "refused" and str(csv_path) in str(out.error), out.error
            return
        if bad:
            assert out.name == "refused", out.result
            assert problem_lines(out.error.problems) == bad, out.error
            assert all(p.startswith(str(csv_path)) for p in out.error.problems), out.error
            return
        assert out.name == ("warned" if warn else "accepted"), (out.error, out.warnings)
        _check_loaded(out.result, people)


# -- eval/info.csv -----------------------------------------------------------------------
IMAGE_IDS = ("ok", "dotdot", "absolute", "link_out", "missing", "empty", "duplicate")


@st.composite
def eval_rows(draw) -> list[dict]:
    names = st.text(st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\\"), min_size=1, max_size=8)
    rows = []
    for i in range(draw(st.integers(0, 5))):
        how = draw(st.one_of(st.just("ok"), st.sampled_from(IMAGE_IDS)))
        if how == "duplicate" and not rows:
            how = "ok"
        rows.append({"how": how, "name": f"{i}{draw(names)}{draw(st.sampled_from(EXTS))}", "ans": draw(ODD_TEXT)})
    return rows


def _image_id(i: int, r: dict, rows: list[dict], root: Path, outside: Path) -> str:
    if r["how"] == "ok":
        (root / r["name"]).write_bytes(b"")
    if r["how"] == "link_out":
        os.symlink(outside / "normal.jpg", root / r["name"])
    if r["how"] == "duplicate":
        return rows[0]["cell"]
    return {"dotdot": "../../../outside/normal.jpg", "absolute": str(outside / "normal.jpg"),
            "empty": ""}.get(r["how"], r["name"])


@examples(2.5)
@given(rows=eval_rows(), lay=layout(EVAL_COLUMNS))
@example(rows=[{"how": "link_out", "name": "0a.jpg", "ans": ""}],   # a link out of DATA was read as an eval image
         lay={"columns": list(EVAL_COLUMNS), "names": {c: c for c in EVAL_COLUMNS}, "dropped": None, "twin": None,
              "bom": False, "crlf": False, "quote_all": False})
def test_info_csv(rows, lay):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, outside = tmp / "data", _outside(tmp)
        root = data / "eval" / "images"
        root.mkdir(parents=True)
        for i, r in enumerate(rows):
            r["cell"] = _image_id(i, r, rows, root, outside)
        csv_path = data / "eval" / "info.csv"
        csv_path.write_bytes(render(lay, [{"ImageID": r["cell"], "ans": r["ans"]} for r in rows]))
        out = attempt("eval/info.csv", lambda: load_eval(data), refusals=(DataError,), watch=[data])
        if header_broken(lay):
            assert out.name == "refused" and str(csv_path) in str(out.error), out.error
            return
        bad = {i + 2 for i, r in enumerate(rows) if r["how"] != "ok"}
        if bad:
            assert out.name == "refused" and problem_lines(out.error.problems) == bad, out.error or out.result
            return
        assert out.name == "accepted", out.error
        assert list(out.result["image_id"]) == [r["name"] for r in rows]
        assert all((data / p).resolve().parent == root.resolve() for p in out.result["path"])


# -- a corrections CSV and the workspace's record of it ----------------------------------
TRAIN_IDS = ("000123", "7", "a b")


def _small_data(tmp: Path) -> Path:
    """Three persons, all seven images each (the corrections' train.csv)."""
    data = tmp / "data"
    root = data / "train" / "images"
    for i, pid in enumerate(TRAIN_IDS):
        (root / f"p{i}").mkdir(parents=True)
        for k in ALL_KINDS:
            (root / f"p{i}" / f"{k}.jpg").write_bytes(b"")
    lines = ["id,gender,race,age,path"] + [f"{pid},male,Asian,{20 + 10 * i},p{i}" for i, pid in enumerate(TRAIN_IDS)]
    (data / "train" / "train.csv").parent.mkdir(parents=True, exist_ok=True)
    (data / "train" / "train.csv").write_text("\n".join(lines) + "\n")
    return data


@st.composite
def correction_rows(draw) -> list[dict]:
    person = mostly(padded(st.sampled_from(TRAIN_IDS)), st.one_of(st.sampled_from(["123", "0007", ""]), ODD_TEXT))
    value = {"gender": genders(), "age": ages(),
             "swap": mostly(st.tuples(st.sampled_from(ALL_KINDS), st.sampled_from(ALL_KINDS), st.sampled_from(":|"))
                            .map(lambda t: f"{t[0]}{t[2]}{t[1]}"), ODD_TEXT)}
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        field = draw(mostly(st.sampled_from(list(value)), ODD_TEXT))
        rows.append({"id": draw(person), "field": draw(padded(st.just(field))),
                     "value": draw(value.get(field.strip(), ODD_TEXT)), "note": draw(ODD_TEXT)})
    return rows


def _apply_model(rows: list[dict]) -> tuple[set[int], dict]:
    """(bad lines, person -> {gender, age, mask per kind}) by the corrections' rules."""
    state = {pid: {"gender": 0, "age": 20 + 10 * i, **{k: IMAGE_KINDS[k] for k in ALL_KINDS}}
             for i, pid in enumerate(TRAIN_IDS)}
    bad = set()
    for i, r in enumerate(rows):
        pid, field, value = r["id"].strip(), r["field"].strip(), r["value"].strip()
        kinds = value.replace("|", ":").split(":")
        if pid not in state or field not in ("gender", "age", "swap"):
            bad.add(i + 2)
        elif field == "gender" and value.lower() in GENDERS:
            state[pid]["gender"] = GENDERS[value.lower()]
        elif field == "age" and _age_ok(value) is not None:
            state[pid]["age"] = _age_ok(value)
        elif field == "swap" and len(kinds) == 2 and all(k in ALL_KINDS for k in kinds):
            a, b = kinds
            state[pid][a], state[pid][b] = state[pid][b], state[pid][a]
        else:
            bad.add(i + 2)
    return bad, state


@examples(1)
@given(rows=correction_rows(), lay=layout(("id", "field", "value")))
@example(rows=[], lay={"columns": ["field", "id", "value", "id "], "names": {"field": "field", "id": "id ", "value": "value",
                                                                             "id ": "id "},   # "id " twice: pandas
                      "dropped": None, "twin": "id", "bom": False, "crlf": False, "quote_all": False})   # made "id .1"
@example(rows=[{"id": "000123", "field": "age", "value": "\u00b2", "note": ""}],   # '²' passed isdigit, crashed int()
         lay={"columns": ["id", "field", "value"], "names": {c: c for c in ("id", "field", "value")}, "dropped": None,
              "twin": None, "bom": False, "crlf": False, "quote_all": False})
def test_corrections_csv(rows, lay):
    from core.label_table import RECORD, set_corrections
    from core.workspace import Workspace
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, ws = _small_data(tmp), Workspace(tmp / "ws").make()
        (ws.root / RECORD).write_text('{"path": "/earlier/corrections.csv"}')   # what a refusal must keep
        corr = tmp / "corrections.csv"
        corr.write_bytes(render(lay, rows))
        out = attempt("corrections CSV", lambda: set_corrections(ws, corr, data) and load_train(data, corrections=corr),
                      refusals=(DataError,), watch=[ws.root, data])
        if header_broken(lay):
            assert out.name == "refused" and str(corr) in str(out.error), out.error
            return
        bad, state = _apply_model(rows)
        if bad:
            assert out.name == "refused" and problem_lines(out.error.problems) == bad, out.error or out.result
            assert all(p.startswith(str(corr)) for p in out.error.problems), out.error
            for line in (i + 2 for i, r in enumerate(rows) if r["id"].strip() in ("123", "0007")):   # zeros lost
                assert any(f"line {line}: " in p and "leading zeros count" in p for p in out.error.problems)
            return
        assert out.name == "accepted", out.error
        for r in out.result.itertuples():
            assert (r.gender, r.age, r.mask) == (state[r.person]["gender"], state[r.person]["age"], state[r.person][r.kind])


RECORDS = mostly(st.just({"path": "GOOD"}),
                 st.one_of(st.builds(lambda p: {"path": p}, st.sampled_from(["MISSING", "", None, 5, ["GOOD"]])),
                           st.dictionaries(ODD_TEXT, st.one_of(ODD_TEXT, st.integers(), st.none()), max_size=2),
                           st.lists(ODD_TEXT, max_size=2), st.integers(), st.none()), share=0.5)


@examples(4)
@given(record=RECORDS, form=st.sampled_from(["json", "bom", "cut", "text"]), junk=ODD_TEXT)
@example(record={"path": "GOOD"}, form="cut", junk="")   # a half-written or hand-edited record was a traceback
def test_corrections_record(record, form, junk):
    import json

    from core.label_table import RECORD, corrections_file
    from core.workspace import Workspace
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ws, good = Workspace(tmp / "ws").make(), tmp / "corrections.csv"
        good.write_text("id,field,value\n")
        if isinstance(record, dict) and record.get("path") in ("GOOD", "MISSING"):
            record = {**record, "path": str(tmp / "corrections.csv" if record["path"] == "GOOD" else tmp / "gone.csv")}
        text = json.dumps(record)
        text = {"json": text, "bom": "\ufeff" + text, "cut": text[: len(text) // 2], "text": junk}[form]
        (ws.root / RECORD).write_text(text, encoding="utf-8")
        out = attempt("WS/corrections.json", lambda: corrections_file(ws), refusals=(DataError,), watch=[ws.root])
        if form in ("json", "bom") and record == {"path": str(good)}:
            assert out.name == "accepted" and out.result == good
        else:
            assert out.name == "refused" and str(ws.root / RECORD) in str(out.error), out.result


# -- the answers file of the scoring functions ---------------------------------------------------
@st.composite
def answer_rows(draw) -> list[dict]:
    ans = mostly(st.integers(0, 17).map(str),
                 st.one_of(st.integers(-3, 40).map(str), padded(st.integers(0, 17).map(str)),
                           st.sampled_from(["3.0", "", "x", "\u00b3"]), ODD_TEXT))
    image_ids = mostly(st.integers(0, 10**6).map(lambda i: f"{i}.jpg"),
                       st.one_of(st.integers(0, 9).map(lambda i: f"{i}.jpg"), ODD_TEXT))
    return [{"ImageID": draw(image_ids), "ans": draw(ans)} for _ in range(draw(st.integers(0, 8)))]


@examples(2.5)
@given(rows=answer_rows(), lay=layout(("ImageID", "ans")), shift=st.integers(0, 17))
@example(rows=[{"ImageID": "0.jpg", "ans": "18"}], shift=0,   # class 18 broke the confusion matrix's reshape
         lay={"columns": ["ImageID", "ans"], "names": {"ImageID": "ImageID", "ans": "ans"}, "dropped": None,
              "twin": None, "bom": False, "crlf": False, "quote_all": False})
@example(rows=[{"ImageID": "0.jpg", "ans": "1"}], shift=0,   # a header without 'ans' was a KeyError
         lay={"columns": ["ImageID"], "names": {"ImageID": "ImageID"}, "dropped": "ans",
              "twin": None, "bom": False, "crlf": False, "quote_all": False})
def test_answers_file(rows, lay, shift):
    from sklearn.metrics import f1_score

    from results.scoring import score_submission
    with tempfile.TemporaryDirectory() as d:
        answers, sub = Path(d) / "answers.csv", Path(d) / "submission.csv"
        answers.write_bytes(render(lay, rows))
        ok = [r for r in rows if re.fullmatch(r"[0-9]+", r["ans"].strip(), flags=re.ASCII) and int(r["ans"]) < 18]
        ids = list(dict.fromkeys(r["ImageID"] for r in rows))
        truth = {r["ImageID"]: int(r["ans"]) for r in ok}
        pred = {i: (truth.get(i, 0) + shift) % 18 for i in ids}
        sub.write_bytes(render(dict(lay, columns=["ImageID", "ans"], names={"ImageID": "ImageID", "ans": "ans"},
                                    dropped=None, twin=None), [{"ImageID": i, "ans": str(p)} for i, p in pred.items()]))
        out = attempt("answers file", lambda: score_submission(sub, answers), refusals=(DataError,), watch=[Path(d)])
        if header_broken(lay):
            assert out.name == "refused" and str(answers) in str(out.error), out.error
            return
        bad = {i + 2 for i, r in enumerate(rows) if r not in ok or r["ImageID"] in [x["ImageID"] for x in rows[:i]]}
        if bad:
            assert out.name == "refused" and problem_lines(out.error.problems) == bad, out.error or out.result
            return
        assert out.name == "accepted", out.error
        if ids:
            y = [truth[i] for i in ids]
            assert abs(out.result["f1"] - f1_score(y, [pred[i] for i in ids], average="macro")) < 1e-9


# -- a --pretrained weights file ---------------------------------------------------------
TINY = "test_efficientnet"   # timm's own test architecture: 88 tensors, 0.36 M parameters
MUTATIONS = ("none", "drop", "reshape", "extra", "half", "non_tensor", "int_key", "empty", "junk", "cut", "list",
             "missing")


def _tiny_state() -> dict:
    return dict(_tiny_tensors())


@lru_cache(maxsize=1)
def _tiny_tensors() -> tuple:
    import timm
    import torch
    torch.manual_seed(777)
    return tuple((k, torch.randn(v.shape).to(v.dtype)) for k, v in timm.create_model(TINY).state_dict().items())


def _mutate(state: dict, how: str, at: int):
    import torch
    keys = list(state)
    k = keys[at % len(keys)]
    if how == "drop":
        state.pop(k)
    elif how == "reshape":
        state[k] = torch.zeros(*state[k].shape, 2)
    elif how == "extra":
        state["extra.weight"] = torch.zeros(3)
    elif how == "half":
        state[k] = state[k].half()
    elif how == "non_tensor":
        state[k] = "not a tensor"
    elif how == "int_key":
        state[at] = state.pop(k)
    elif how == "empty":
        state.clear()
    return [state] if how == "list" else state


@st.composite
def weights_files(draw) -> dict:
    return {"layout": draw(st.sampled_from(["timm", "other"])), "wrap": draw(st.sampled_from(["", "state_dict", "model"])),
            "format": draw(st.sampled_from([".pth", ".safetensors"])), "how": draw(st.sampled_from(MUTATIONS)),
            "at": draw(st.integers(0, 200)), "cut": draw(st.floats(0, 1)), "junk": draw(st.binary(max_size=64))}


def _write_weights(path: Path, state, f: dict) -> None:
    import torch
    if f["how"] == "junk":
        path.write_bytes(f["junk"])
        return
    if f["how"] == "missing":
        return
    tensors = isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    if path.suffix == ".safetensors" and tensors:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({f["wrap"]: state} if f["wrap"] else state, path)
    if f["how"] == "cut":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * f["cut"] * 0.99)])


def _weights_accepted(f: dict, ours: dict, heads: tuple[str, ...]) -> bool:
    """A file is used only when every tensor fits: by name (timm's layout; its classifier optional)
    or, in another layout, by order with none missing, added or reshaped."""
    k = list(ours)[f["at"] % len(ours)]
    if f["how"] in ("non_tensor", "int_key", "empty", "junk", "cut", "list", "missing", "extra"):
        return False
    if f["layout"] == "other" and f["format"] == ".safetensors":   # sorted by name: the order is lost
        return False
    if f["how"] in ("drop", "reshape"):
        return f["layout"] == "timm" and k.startswith(heads)
    return True


@lru_cache(maxsize=1)
def _tiny_heads() -> tuple[str, ...]:
    import timm

    from trainables.models import classifier_prefixes
    return classifier_prefixes(timm.create_model(TINY))


@examples(1)
@given(f=weights_files())
@example(f={"layout": "timm", "wrap": "", "format": ".pth", "how": "int_key", "at": 3, "cut": 0.0, "junk": b""})  # int key: AttributeError
@example(f={"layout": "other", "wrap": "", "format": ".safetensors", "how": "none", "at": 0, "cut": 0.0,  # mapped by a
            "junk": b""})                                                              # sorted order, not the file's
def test_pretrained_weights_file(f):
    from trainables.models import pretrained_backbone
    from trainables.pretrained import PretrainedError
    ours = _tiny_state()
    heads = _tiny_heads()
    state = dict(ours) if f["layout"] == "timm" else {f"layer{i}.w": v for i, v in enumerate(ours.values())}
    state = _mutate(state, f["how"], f["at"])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"weights{f['format']}"
        _write_weights(path, state, f)
        out = attempt("--pretrained weights file", lambda: pretrained_backbone(TINY, str(path)),
                      refusals=(PretrainedError,), watch=[Path(d)])
        if not _weights_accepted(f, ours, heads):
            assert out.name == "refused" and str(path) in str(out.error), out.result
            return
        assert out.name == "accepted", out.error
        pairs = zip(state.values(), ours.items()) if f["layout"] == "other" else \
            ((state[k], (k, v)) for k, v in ours.items() if k in state)
        want = {k: theirs.to(v.dtype) for theirs, (k, v) in pairs if not k.startswith(heads)}
        assert list(out.result) == [k for k in ours if not k.startswith(heads)]
        assert all(out.result[k].dtype == ours[k].dtype and (out.result[k] == want[k]).all() for k in want)


# -- image files -------------------------------------------------------------------------
class ImageRefused(Exception):
    """decode() returned no image: preprocessing records the reason in the manifest's error column."""


FORMATS = {"JPEG": ("RGB", "L", "CMYK"), "PNG": ("RGB", "L", "P", "RGBA", "LA", "I;16", "1"),
           "GIF": ("P", "L"), "BMP": ("RGB", "L", "P"), "TIFF": ("RGB", "L", "CMYK", "I;16", "F", "RGBA"),
           "WEBP": ("RGB", "RGBA")}
LOSSLESS = ("PNG", "BMP", "TIFF")


@st.composite
def image_files(draw) -> dict:
    fmt = draw(st.sampled_from(list(FORMATS)))
    return {"format": fmt, "mode": draw(st.sampled_from(FORMATS[fmt])), "w": draw(st.integers(1, 40)),
            "h": draw(st.integers(1, 40)), "seed": draw(st.integers(0, 2**16)),
            "how": draw(st.sampled_from(["none", "none", "cut", "flip", "prefix", "suffix", "junk"])),
            "at": draw(st.floats(0, 1)), "junk": draw(st.binary(max_size=64))}


def _image(f: dict):
    import numpy as np
    from PIL import Image
    rgb = np.random.default_rng(f["seed"]).integers(0, 256, (f["h"], f["w"], 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    if f["mode"] == "I;16":
        return Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    if f["mode"] == "F":
        return Image.fromarray(rgb[..., 0].astype(np.float32))
    return img.convert(f["mode"])


def _file_bytes(f: dict, img) -> bytes:
    from tests.image_files import encode
    data = encode(img, f["format"])
    k = int(len(data) * f["at"])
    return {"none": data, "cut": data[:k], "flip": data[:k] + bytes([data[k] ^ 0x55]) + data[k + 1:] if k < len(data) else data,
            "prefix": f["junk"] + data, "suffix": data + f["junk"], "junk": f["junk"]}[f["how"]]


@examples(8)
@given(f=image_files())
@example(f={"format": "PNG", "mode": "I;16", "w": 8, "h": 8, "seed": 0, "how": "none", "at": 0.0, "junk": b""})  # was white
def test_image_file(f):
    import numpy as np

    from serving.detector import decode

    def run():
        dec = decode(path)
        if dec.img is None:
            raise ImageRefused(dec.error)
        return dec

    img = _image(f)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"mask1.{f['format'].lower()}"
        path.write_bytes(_file_bytes(f, img))
        out = attempt("image file", run, refusals=(ImageRefused,),
                      odd=lambda dec: dec.note if dec.note.startswith("partly") else "")
    if out.error is not None:
        assert str(out.error), "refused without a reason"
        assert f["how"] != "none" or f["format"] == "WEBP" and min(f["w"], f["h"]) < 1, out.error
        return
    dec = out.result
    assert dec.img.mode == "RGB" and min(dec.img.size) >= 1
    if f["how"] == "none":
        assert dec.img.size == (f["w"], f["h"])
        if f["format"] in LOSSLESS and f["mode"] in ("RGB", "L", "P", "1"):
            assert (np.asarray(dec.img) == np.asarray(img.convert("RGB"))).all()
        if f["mode"] == "I;16":   # 16 bits scaled to 8, not clipped to white
            assert np.abs(np.asarray(dec.img)[..., 0].astype(int) - np.asarray(img) // 257).max() <= 1
