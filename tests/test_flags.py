"""Every flag of every command, generated from the option declarations (orchestrator/options.py):
parsed with a value other than its default, it reaches the option record its command builds with
the type its field declares. A flag whose value arrives as the wrong type (``reproduce --threads
2`` as the string '2') crashes only deep inside its stage; here it fails in-process, without Ray."""
from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from core.labels import BACKBONES, HEADS
from orchestrator import cli
from orchestrator.options import FLAGS, csv, duration, floats, picked
from trainables.config import TrialConfig

# what each command needs besides its flags (a positional, a required option)
REQUIRED = {"tune": ["--head", "age"], "retrain": ["--head", "age"], "reproduce": ["RUN_ID"]}
# flags declared in cli.py itself, not option records' fields
CLI_OWN = {"help", "data", "workspace", "tracking_uri", "storage", "artifact_location", "log_level",
           "corrections", "head", "run_id", "out"}
# csv flags whose entries are checked names
CSV_VALUES = {"heads": ",".join(list(HEADS)[1:]), "search_backbones": ",".join(sorted(BACKBONES)[:2]), "tta": "none",
              "head_backbone": f"{list(HEADS)[1]}={sorted(BACKBONES)[0]}"}


def _subparser(command: str):
    parser = cli.build_parser([command])
    return next(a for a in parser._actions if a.dest == "command").choices[command]


def _hints(record) -> dict:
    """Field -> annotation, resolved (the names options.py imports only for type checkers too)."""
    from results.calibration import CalibrationSpec
    from results.selection import Studies
    return typing.get_type_hints(record, localns={"Studies": Studies, "CalibrationSpec": CalibrationSpec})


def _plain(hint) -> type:
    """The type a flag's value has: ``int | None`` -> int, ``tuple[str, ...]`` -> tuple."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _expected(p, name: str) -> type:
    decl = FLAGS[name]
    if decl.kwargs.get("type") in (csv, floats):
        return tuple
    if decl.kwargs.get("nargs") == "+":
        return list
    record = p.declared_by[name]
    return _plain(_hints(TrialConfig if isinstance(record, dict) else record)[name])


def _value(action, expected: type, name: str) -> list[str]:
    """Command-line words that set ``action`` to something other than its default."""
    if expected is bool:
        return [action.option_strings[0]]
    if action.choices:
        word = next(str(c) for c in action.choices if c != action.default)
    elif FLAGS[name].kwargs.get("type") is duration:
        word = "90s"
    elif name in CSV_VALUES:
        word = CSV_VALUES[name]
    elif FLAGS[name].kwargs.get("type") is floats:
        word = "0.5,0.6,0.7"
    elif expected is int:
        word = str((action.default or 1) + 2)
    elif expected is float:
        word = "0.37"
    elif expected is Path:
        word = "elsewhere/file.csv"
    elif name == "fold":
        word = "1"
    else:
        word = f"{name}-given"
    return [action.option_strings[0], *(["r1", "r2"] if action.nargs == "+" else [word])]


def _declared(command: str):
    p = _subparser(command)
    acts = [a for a in p._actions if a.dest not in CLI_OWN]
    return p, acts


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_flag_is_declared_with_a_type(command):
    """Each flag a command takes comes from options.FLAGS, with a record that says its type."""
    p, acts = _declared(command)
    for a in acts:
        assert a.dest in FLAGS and a.dest in p.declared_by, f"{command} --{a.dest}: not declared in options.py"
        _expected(p, a.dest)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_flag_reaches_its_record_with_its_declared_type(command):
    p, acts = _declared(command)
    argv = [command, *REQUIRED.get(command, [])]
    expected = {a.dest: _expected(p, a.dest) for a in acts}
    for a in acts:
        argv += _value(a, expected[a.dest], a.dest)
    ns = cli.build_parser([command]).parse_args(argv)
    for a in acts:
        got = getattr(ns, a.dest)
        assert got != a.default, f"{command} --{a.dest}: still its default {a.default!r}"
        assert isinstance(got, expected[a.dest]), (
            f"{command} --{a.dest}: parsed to {type(got).__name__} {got!r}, declared {expected[a.dest].__name__}")
    # ... and into the option records the command builds, field by field
    for record in {r for r in p.declared_by.values() if is_dataclass(r)}:
        made = record(**picked(ns, record, **_as_the_cli_passes(ns, record)))
        hints = _hints(record)
        for f in fields(record):
            if f.name in expected:
                assert isinstance(getattr(made, f.name), _plain(hints[f.name])), f"{record.__name__}.{f.name}"


def _as_the_cli_passes(ns, record) -> dict:
    """The conversions cli.py applies before building ``record`` (runs: a tuple; study: per head)."""
    from results.selection import parse_studies
    out = {}
    if "runs" in {f.name for f in fields(record)}:
        out["runs"] = tuple(ns.runs)
    if record.__name__ in ("EnsembleOptions", "AuditOptions"):
        out["study"] = parse_studies(ns.study)
    return out


def test_reproduce_numbers_are_numbers():
    """Item 1 as a user typed it: `reproduce RUN --threads 2 --tolerance 0.01`."""
    ns = cli.build_parser(["reproduce"]).parse_args(["reproduce", "RUN", "--threads", "2", "--tolerance", "0.01"])
    assert ns.threads == 2 and isinstance(ns.threads, int)
    assert ns.tolerance == 0.01 and isinstance(ns.tolerance, float)


def test_tune_trial_flags_reach_the_trial_config():
    """tune's trial settings go to TuneOptions.trial, typed as TrialConfig declares them."""
    ns = cli.build_parser(["tune"]).parse_args(["tune", "--head", "age", "--epochs", "3", "--img-size", "48"])
    opts = cli._tune_options(ns)
    assert opts.trial == {"epochs": 3, "img_size": 48}
