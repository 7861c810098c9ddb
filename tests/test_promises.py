"""Promises README.md makes that a careful reading of the code broke: each test here failed on
the code before its fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.corrections import apply_corrections
from core.dataset import load_eval, load_train
from core.errors import DataError
from results.scoring import read_classes


# -- data errors name the real file line (blank lines and quoted line breaks count) ------------
def _insert_blank_line_before(path: Path, line: int) -> list[str]:
    lines = path.read_text().splitlines()
    return lines[:line - 1] + [""] + lines[line - 1:]


def test_bad_gender_after_a_blank_line_names_its_file_line(demo_copy):
    """Seen: a bad gender on file line 11, after a blank line, was reported as "line 10"."""
    csv_path = demo_copy / "train" / "train.csv"
    lines = _insert_blank_line_before(csv_path, 5)   # the blank line is line 5
    row = lines[10].split(",")                       # file line 11
    lines[10] = ",".join([row[0], "robot", *row[2:]])
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_train(demo_copy)
    assert any(p.startswith(f"{csv_path} line 11:") and "robot" in p for p in err.value.problems), err.value


def test_eval_line_after_a_quoted_line_break_is_its_file_line(demo_copy):
    """A quoted field over two lines moves every later row one line down the file."""
    info = demo_copy / "eval" / "info.csv"
    lines = info.read_text().splitlines()
    lines.insert(2, "")                                   # line 3 blank
    lines[3] = lines[3] + ',"a note\nover two lines"'     # lines 4-5: one record
    lines[0] += ",note"
    lines.insert(6, "missing.jpg,0")                      # file line 8: the two-line record pushed it
    info.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_eval(demo_copy)
    assert any(p.startswith(f"{info} line 8:") and "missing.jpg" in p for p in err.value.problems), err.value


def test_corrections_and_submission_lines_skip_blank_lines(demo_copy, tmp_path):
    train = load_train(demo_copy)
    fix = tmp_path / "fix.csv"
    fix.write_text(f"id,field,value\n\n{train['person'].iloc[0]},gender,female\n\nnobody,gender,male\n")
    with pytest.raises(DataError) as err:
        apply_corrections(train, fix)
    assert [p.split(":")[0] for p in err.value.problems] == [f"{fix} line 5"], err.value
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageID,ans\na.jpg,1\n\nb.jpg,99\n")
    with pytest.raises(DataError) as err:
        read_classes(sub, "a submission")
    assert [p.split(":")[0] for p in err.value.problems] == [f"{sub} line 4"], err.value


# -- options no stage can run are usage errors, before anything runs ---------------------------
@pytest.mark.parametrize("argv", [
    ["run", "--folds", "1"],                                      # seen: a ValueError after preprocessing
    ["run", "--num-samples", "-1"],
    ["tune", "--head", "age", "--phase", "search", "--num-samples", "0"],   # seen: No objects to concatenate
    ["tune", "--head", "age", "--folds", "1"],
    ["tune", "--head", "age", "--folds", "3", "--fold", "3"],
])
def test_unrunnable_options_exit_2_before_anything_runs(argv, tmp_path, capsys):
    from orchestrator.cli import main
    data, ws = tmp_path / "data", tmp_path / "ws"
    with pytest.raises(SystemExit) as done:
        main([*argv, "--data", str(data), "--workspace", str(ws)])
    assert done.value.code == 2
    assert "error: --" in capsys.readouterr().err   # the usage line names the option to change
    assert not data.exists() and not ws.exists()   # no demo data written, nothing preprocessed


# -- run with its MLflow server down: the clear error tune gives, exit 2 -----------------------
def test_run_against_a_stopped_mlflow_server_is_a_clear_error(demo_dir, tmp_path, capsys, monkeypatch):
    """Seen: a raw MlflowException traceback from experiments/get-by-name (run read MLflow for its
    study's name before any tracking check)."""
    from orchestrator.cli import main
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # the old code's traceback, fast
    ws = tmp_path / "ws"
    code = main(["run", "--smoke-test", "--data", str(demo_dir), "--workspace", str(ws),
                 "--tracking-uri", "http://127.0.0.1:9"])   # port 9 (discard): nothing listens
    err = capsys.readouterr().err
    assert code == 2 and "MLflow tracking store http://127.0.0.1:9 is unreachable" in err, err
    assert "start the server" in err and "Traceback" not in err


# -- reproduce never changes what promote picks ------------------------------------------------
def test_reproducing_an_ensemble_leaves_promote_on_the_original(demo_dir, tmp_path):
    """`reproduce` of an ensemble logged a new ensemble model, which `promote` then took as the
    newest: a reproduction became the champion by accident."""
    from mlflow_runs import log_study, store, write_manifest

    from core.workspace import Workspace
    from orchestrator.stages.ensemble import EnsembleOptions, ensemble
    from orchestrator.stages.promote import promote
    from orchestrator.stages.reproduce import reproduce
    from results.run_schema import ENSEMBLE, tag_filter
    ws = tmp_path / "ws"
    client = store(ws)
    write_manifest(demo_dir, ws)
    log_study(client, demo_dir, tmp_path / "art", k=2)
    res = ensemble(demo_dir, ws, EnsembleOptions())
    again = reproduce(demo_dir, Workspace(ws), res.mlflow_run_id)
    assert again.exact, again.table   # the reproduction ran and matched
    runs = client.search_runs([client.get_experiment_by_name("orchestrator").experiment_id],
                              filter_string=tag_filter(role=ENSEMBLE))
    assert [r.info.run_id for r in runs] == [res.mlflow_run_id]   # it logged no ensemble run of its own
    assert promote(Workspace(ws).tracking_uri()).model_id == res.model_id


def test_reproducing_an_ensemble_whose_heads_voted_with_different_studies_replays_each_heads_voters(
        demo_dir, tmp_path):
    """`run --head-backbone gender=...` votes gender with run-gender and mask and age with the joint
    run-all. `reproduce` replayed it with every logged run id for every head, so the joint models
    voted for gender too: another OOF table, another calibration, other answers."""
    import numpy as np
    from mlflow_runs import joint_oof_frame, log_model_run, log_study, store, write_manifest

    from core.dataset import load_train
    from core.workspace import Workspace
    from orchestrator.stages.ensemble import EnsembleOptions, ensemble
    from orchestrator.stages.reproduce import reproduce
    ws = tmp_path / "ws"
    client = store(ws)
    write_manifest(demo_dir, ws)
    train = load_train(demo_dir)
    rng = np.random.default_rng(3)
    half = train["person"].isin(train["person"].unique()[::2]).to_numpy()
    for f in (0, 1):
        log_model_run(client, tmp_path, head="all", phase="cv", fold=f, study="run-all",
                      oof=joint_oof_frame(train[half == (f == 0)], rng))
    log_model_run(client, tmp_path, head="all", phase="full", fold=-1, study="run-all")
    own = log_study(client, demo_dir, tmp_path / "own", study="run-gender", k=2, seed=4)
    studies = {"mask": "run-all", "gender": "run-gender", "age": "run-all"}
    res = ensemble(demo_dir, ws, EnsembleOptions(study=studies))
    logged = json.loads(client.get_run(res.mlflow_run_id).data.tags["ensemble_runs"])
    assert {client.get_run(r).data.tags["study"] for r in logged["gender"]} == {"run-gender"}
    again = reproduce(demo_dir, Workspace(ws), res.mlflow_run_id)
    assert again.exact, again.table
    # `ensemble --runs HEAD=RUN_ID`, the form the replay uses, refuses a model that has no such head
    from results.selection import choose_models
    with pytest.raises(DataError, match=f"MLflow run {own['mask'][0]} predicts mask, so it cannot vote for gender"):
        choose_models(client, [f"gender={own['mask'][0]}"])
    with pytest.raises(DataError, match="--runs 'gender= ': give a run id, models:/ URI or MLflow filter after gender="):
        choose_models(client, ["gender= "])   # an empty item would be an empty filter: every run
