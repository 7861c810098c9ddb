import json
import subprocess
import sys

import pytest

from orchestrator.cli import COMMANDS, main

DESIGN_COMMANDS = ("preprocess", "tune", "retrain", "ensemble", "run", "demo-data", "eda")
NOT_FOR_HELP = ("mlflow", "sklearn", "matplotlib", "torch")


# every `--help` in one fresh interpreter: each command's help text and the modules it imported
# that no earlier one had (so a stage's stack shows under the command that pulled it in)
HELP_PROBE = """
import contextlib, io, json, runpy, sys
out = {}
for command in json.loads(sys.argv[1]):
    before, buf = set(sys.modules), io.StringIO()
    sys.argv = ["orchestrator", *([command] if command else []), "--help"]
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_module("orchestrator", run_name="__main__")
        except SystemExit:
            pass
    out[command] = {"help": buf.getvalue(), "imported": sorted(set(sys.modules) - before)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict:
    commands = ["", *COMMANDS]
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE, json.dumps(commands)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_lists_design_commands(helps):
    for cmd in DESIGN_COMMANDS:
        assert cmd in helps[""]["help"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_imports_no_stage(helps, command):
    """`--help` builds the parser only: no stage's stack (README 'Commands'), so it answers at once."""
    assert "usage: python -m orchestrator" in helps[command]["help"].splitlines()[0]
    heavy = set(helps[command]["imported"]) & set(NOT_FOR_HELP)
    assert not heavy, f"{command} --help imported {heavy}"


def test_help_shows_each_default_from_its_declaration(helps):
    """Defaults in the help come from the option records, never a restated literal."""
    from orchestrator.options import GPU_SHARE, TuneOptions
    flat = " ".join(helps["tune"]["help"].split())
    assert f"two trials a card) (default: {GPU_SHARE})" in flat
    assert f"--max-failures MAX_FAILURES retries of a crashed trial from its checkpoint (default: {TuneOptions.max_failures})" in flat
    assert "--experiment EXPERIMENT MLflow experiment name (default: orchestrator)" in flat


COMMON = {"data", "workspace", "tracking_uri", "storage", "artifact_location", "log_level", "corrections",
          "command", "run", "parser"}


def test_every_flag_lands_in_the_options_its_stage_takes():
    """A flag no option record takes would be parsed and then dropped: each is a record's field."""
    from core.faces import CropSettings
    from orchestrator import cli
    from orchestrator.options import (AuditOptions, EnsembleOptions, PreprocessOptions, PromoteOptions,
                                      RetrainOptions, RunOptions, TuneOptions)
    from dataclasses import fields
    takes = {"tune": (TuneOptions, {"head", *cli.TRIAL_FLAGS}), "retrain": (RetrainOptions, {"head"}),
             "run": (RunOptions, set()), "ensemble": (EnsembleOptions, set()), "audit": (AuditOptions, set()),
             "promote": (PromoteOptions, set()), "preprocess": (PreprocessOptions, {f.name for f in fields(CropSettings)})}
    for command, (record, also) in takes.items():
        args = cli.build_parser([command]).parse_args([command, *(["--head", "age"] if "head" in also else [])])
        stray = set(vars(args)) - COMMON - also - {f.name for f in fields(record)}
        assert not stray, f"{command}: {stray} reach no field of {record.__name__}"


def test_tune_flags_become_the_study_options_and_trial_settings():
    from orchestrator import cli
    from orchestrator.options import GPU_SHARE
    args = cli.build_parser(["tune"]).parse_args(["tune", "--head", "age", "--epochs", "3", "--img-size", "48",
                                                  "--search-backbones", "lite0-64,resnet10t-64", "--fold", "1"])
    opts = cli._tune_options(args)
    assert opts.trial == {"epochs": 3, "img_size": 48} and opts.fold == "1" and opts.gpus_per_trial == GPU_SHARE
    assert opts.search_backbones == ("lite0-64", "resnet10t-64") and opts.k == 5 and opts.samples == 20
    with pytest.raises(ValueError, match=r"trial setting\(s\) lr_max: use TrialConfig fields"):
        type(opts)(trial={"lr_max": 1.0})


def test_demo_data_then_eda_write_plots(tmp_path):
    data, ws = tmp_path / "data", tmp_path / "ws"
    assert main(["demo-data", "--data", str(data), "--persons", "12", "--eval-persons", "2"]) == 0
    assert main(["eda", "--data", str(data), "--workspace", str(ws)]) == 0
    eda = ws / "results" / "eda"
    for png in ("heads.png", "age_hist.png", "classes.png"):
        assert (eda / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    counts = (eda / "class_counts.csv").read_text().splitlines()
    assert len(counts) == 19 and "| class | name | images | share |" in (eda / "eda.md").read_text()


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "eda", "--data", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.csv: file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_folds_command(tmp_path, demo_dir, capsys):
    assert main(["folds", "--data", str(demo_dir), "--workspace", str(tmp_path), "--folds", "3"]) == 0
    assert (tmp_path / "folds" / "person_k3_seed777.csv").is_file()


@pytest.mark.parametrize("argv,says", [
    (["run", "--budget", "5x"], "argument --budget: budget '5x'"),
    (["run", "--heads", "mask,nose", "--per-head"], "unknown head(s) nose"),
    (["tune", "--head", "age", "--fold", "x"], "--fold 'x'"),
])
def test_a_bad_option_value_is_a_usage_error_not_a_traceback(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--data", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and says in err and "Traceback" not in err


def test_corrections_are_set_once_for_later_commands(tmp_path, demo_dir, capsys):
    """`folds --corrections F` records F; `eda` without it uses it; `none` clears it."""
    import pandas as pd
    persons = pd.read_csv(demo_dir / "train" / "train.csv", dtype=str)["id"]
    corr = tmp_path / "c.csv"
    pd.DataFrame({"id": persons, "field": "age", "value": "75"}).to_csv(corr, index=False)
    common = ["--data", str(demo_dir), "--workspace", str(tmp_path / "ws")]
    assert main(["folds", *common, "--corrections", str(corr)]) == 0
    assert main(["eda", *common]) == 0
    counts = pd.read_csv(tmp_path / "ws" / "results" / "eda" / "class_counts.csv")
    assert counts.loc[counts["class"] % 3 < 2, "images"].sum() == 0
    assert main(["eda", *common, "--corrections", "none"]) == 0
    counts = pd.read_csv(tmp_path / "ws" / "results" / "eda" / "class_counts.csv")
    assert counts.loc[counts["class"] % 3 < 2, "images"].sum() > 0


@pytest.mark.parametrize("options", [
    dict(folds=2, num_samples=1, seed=778, backbone="lite0-96", study="run-all",   # as `run --budget` starts a study
         phase="cv", gpus_per_trial=0.0, cpus_per_trial=1.0, address="auto", max_concurrent=2,
         trial=dict(precision="auto", val_from=2, model="tf_efficientnet_lite0", img_size=96, pretrained="lite0",
                    batch_size=64, age_head="ordinal", freeze=4)),
    dict(smoke_test=True, search_backbones=("lite0-64", "resnet10t-64"), study="age-x", fold="1", phase="both",
         experiment="mine", time_budget_s=600.0, max_failures=0),
])
def test_the_resume_command_a_stopped_study_prints_gives_back_its_settings(tmp_path, options):
    """A failed fold or a Ctrl-C prints `tune ... --resume`; without the study's settings that
    command would build the recipe's model, which the study's pins refuse, and without its
    workspace, store, experiment or fold it would find nothing to resume or never end."""
    import shlex
    from types import SimpleNamespace

    from core.workspace import Workspace
    from orchestrator import cli
    from orchestrator.options import TUNE_FLAGS, TuneOptions
    from orchestrator.stages.tune import resume_command
    o = TuneOptions(**options)
    ws = Workspace(tmp_path / "w s", storage=str(tmp_path / "shared"))
    plan = SimpleNamespace(head="all", study=o.study, options=o, data=tmp_path / "d", ws=ws, uri="http://mlflow:5000")
    argv = shlex.split(resume_command(plan, "cv"))[3:]
    ns = cli.build_parser(argv[:1]).parse_args(argv)
    back = cli._tune_options(ns)
    assert back.trial == {k: v for k, v in o.trial.items() if k != "val_from"}   # run's schedule: sized anew
    assert {f: getattr(back, f) for f in TUNE_FLAGS if f != "resume"} == {f: getattr(o, f) for f in TUNE_FLAGS
                                                                          if f != "resume"}
    assert back.resume and ns.head == "all"
    assert (ns.data, ns.workspace, ns.tracking_uri, ns.storage) == (tmp_path / "d", tmp_path / "w s",
                                                                  "http://mlflow:5000", str(tmp_path / "shared"))
