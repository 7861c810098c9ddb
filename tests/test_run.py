"""`run` end to end on the demo data: real Ray, Tune + Optuna, MLflow (SQLite), ensemble."""
import json
import shlex
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import ages
from core.demo_data import DemoSpec, write_demo_data
from orchestrator.cli import main



@pytest.fixture
def smoke_run(smoke_chain) -> Path:
    """The suite's smoke run (conftest's smoke_chain: corrections make every training person 70,
    so every stage must read the corrected table for the checks below to hold)."""
    return smoke_chain


def test_corrections_reach_training_oof_truth_and_report(smoke_run):
    report = smoke_run / "ws" / "results" / "ensemble"
    counts = pd.read_csv(report / "class_counts.csv")
    young = counts["class"] % 3 < 2           # <30 and 30-59 classes
    assert counts.loc[young, "train"].sum() == 0 and counts["train"].sum() > 0
    support = pd.read_csv(report / "per_class.csv")
    assert support.loc[support["class"] % 3 < 2, "oof_support"].sum() == 0    # OOF truth all >= 60
    sub = pd.read_csv(smoke_run / "ws" / "results" / "submission.csv")
    assert (sub["ans"] % 3 == 2).mean() > 0.5, "the models did not learn the corrected ages"


def test_submission_is_valid(smoke_run):
    sub = pd.read_csv(smoke_run / "ws" / "results" / "submission.csv")
    info = pd.read_csv(smoke_run / "data" / "eval" / "info.csv")
    assert list(sub.columns) == ["ImageID", "ans"]
    assert list(sub["ImageID"]) == list(info["ImageID"])
    assert sub["ans"].between(0, 17).all()


def test_report_and_plots(smoke_run):
    report = smoke_run / "ws" / "results" / "ensemble"
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) >= 2, pngs
    assert all((report / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert any(report.glob("*.md"))
    assert (smoke_run / "ws" / "results" / "eda" / "classes.png").is_file()


def test_mlflow_has_every_stage(smoke_run):
    client = mlflow.MlflowClient(f"sqlite:///{smoke_run / 'ws' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("orchestrator")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    stages = {(r.data.tags.get("stage"), r.data.tags.get("head")) for r in runs}
    # the default run trains one joint model (a classifier per head)
    assert ("tune", "all") in stages and ("full", "all") in stages
    ens = [r for r in runs if r.data.tags.get("stage") == "ensemble"]
    # run's default: the full-data models (one per trial slot, 2 here) vote; the folds calibrate
    assert ens and ens[0].data.params["eval_vote"] == "full"
    full = [r for r in runs if r.data.tags.get("phase") == "full" and r.data.tags.get("role") == "trial"]
    per_retrain = Counter(r.data.tags["retrain"] for r in full)
    assert per_retrain and set(per_retrain.values()) == {2}
    tuned = [r for r in runs if r.data.tags.get("stage") == "tune" and r.data.tags.get("role") != "study"]
    assert all("val_f1" in r.data.metrics for r in tuned)
    # every model that can vote is an MLflow logged model, the ensemble is one too; names say what
    from results.run_schema import ENSEMBLE_MODEL_NAME, logged_model_id
    assert all(logged_model_id(client, r) for r in full + tuned)
    assert logged_model_id(client, ens[0], ENSEMBLE_MODEL_NAME)
    assert {r.info.run_name.split(" · ")[:2][1] for r in full + tuned} == {"cv", "full"}


def test_run_audits_the_labels_and_the_audit_command_repeats_it(smoke_run):
    ws = smoke_run / "ws"
    audit_dir = ws / "results" / "audit" / "run-all"
    suspects = pd.read_csv(audit_dir / "suspects.csv")
    assert list(suspects.columns[:6]) == ["person", "image", "field", "label", "evidence", "score"]
    assert main(["audit", "--data", str(smoke_run / "data"), "--workspace", str(ws), "--study", "run-all"]) == 0
    fixes = pd.read_csv(audit_dir / "corrections_suggested.csv")
    assert list(fixes.columns) == ["id", "field", "value", "note"]
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("orchestrator")
    audits = client.search_runs([exp.experiment_id], "tags.stage = 'audit'")
    assert len(audits) >= 2 and {r.data.tags["study"] for r in audits} == {"run-all"}


def test_rerun_resumes_instead_of_retraining(smoke_run):
    """Seen: a second `run --smoke-test` on a finished workspace took the full-data trial runs from
    2 to 4 (each retrain was a new Tune experiment). Finished trials are reused: none runs again."""
    from results.tracking import find_runs
    uri = f"sqlite:///{smoke_run / 'ws' / 'mlflow.db'}"

    def trials():
        return {p: set(find_runs(uri, phase=p)["run_id"]) for p in ("search", "cv", "full")}
    before = trials()
    assert before["full"] and before["cv"]
    assert main(["run", "--data", str(smoke_run / "data"), "--workspace", str(smoke_run / "ws"), "--smoke-test"]) == 0
    assert trials() == before, "a rerun trained finished trials again"


@pytest.mark.parametrize("refused,why", [
    # found before preprocessing: the label table has fewer persons than folds
    (["--smoke-test", "--folds", "40"], "40 person-level folds need at least 40 persons"),
    # found after preprocessing rewrote the manifest with the new corrections (the speed probe)
    (["--budget", "5s", "--model", "test_efficientnet", "--img-size", "32"], "budget too small"),
])
def test_a_refused_run_leaves_the_workspace_as_it_was(smoke_run, capsys, refused, why):
    """A refused `run` with new corrections (every person 20: study run-2) leaves the corrections
    record and the manifest as they were (seen: the manifest kept the refused labels, so every later
    command asked to "rerun preprocess"), pins no study to what it refused (seen: the next valid
    run on those labels was refused as "made from other inputs") and leaves no run ledger (seen: the
    next run-2 was charged the refused run's seconds as a run "stopped unfinished")."""
    from core.label_table import corrections_file, current_labels
    from core.workspace import Workspace
    data, ws = smoke_run / "data", Workspace(smoke_run / "ws")
    recorded, manifest = corrections_file(ws), ws.manifest.read_bytes()
    assert recorded is not None   # the smoke run's (every person 70)
    with pytest.raises(SystemExit) as stop:   # exit 2, from the command table (orchestrator/cli.py)
        code = main(["run", "--data", str(data), "--workspace", str(ws.root), *refused,
                     "--corrections", str(ages(data, smoke_run / "ages-20.csv", 20))])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and why in err and "Traceback" not in err, err
    assert corrections_file(ws) == recorded and ws.manifest.read_bytes() == manifest
    current_labels(data, ws)   # no "rerun preprocess": the labels are the workspace's again
    assert not list((ws.root / "studies").glob("run-2-*")), list((ws.root / "studies").iterdir())
    assert not (ws.results / "run-run-2.json").exists()


def test_a_rerun_that_changes_how_a_studys_models_are_built_stops_before_anything_is_charged(smoke_run, capsys):
    """`run` again with another backbone or age head for a study that holds models: refused
    before the run ledger starts (the study's pins refused it only when that target started,
    after the targets before it had trained on the budget's clock), naming the change and a way out."""
    data, ws = str(smoke_run / "data"), smoke_run / "ws"
    code = main(["run", "--data", data, "--workspace", str(ws), "--smoke-test", "--age-head", "softmax"])
    err = capsys.readouterr().err
    assert code == 2 and "study 'run-all' holds models trained with other settings (age_head ordinal -> softmax)" in err
    assert "--study run-new" in err and "Traceback" not in err, err
    assert not (ws / "results" / "run-run.json").exists()   # the finished smoke run left none; nor did this


def test_a_model_the_ordinal_age_head_cannot_take_is_refused_before_anything_is_charged(smoke_run, capsys):
    """dla34's classifier is a Conv2d: every trial of the joint target failed on it, after
    preprocessing and the speed probe, on the budget's clock."""
    data, ws = str(smoke_run / "data"), smoke_run / "ws"
    code = main(["run", "--data", data, "--workspace", str(ws), "--model", "dla34", "--study", "dla"])
    err = capsys.readouterr().err
    assert code == 2 and "dla-all: an ordinal age head replaces a linear classifier; DLA's is Conv2d" in err, err
    assert "--age-head softmax" in err and not (ws / "results" / "run-dla.json").exists()


def test_a_budget_too_small_is_a_usage_error_that_charges_nothing(smoke_run, capsys):
    data, ws = str(smoke_run / "data"), smoke_run / "ws"
    with pytest.raises(SystemExit) as stop:
        main(["run", "--data", data, "--workspace", str(ws), "--budget", "5s", "--model", "test_efficientnet",
              "--img-size", "32"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "budget too small" in err and "Traceback" not in err
    assert not (ws / "results" / "run-run.json").exists()   # the run ledger charged nothing


def test_the_audits_printed_command_trains_the_next_study_on_the_corrected_labels(smoke_run, capsys):
    """The loop README promises: `run` prints the command that applies the audit's suggestions;
    after editing them, that command (as printed) trains the next study on the new labels, the
    old study stays, and a command refused on the way leaves the workspace's corrections as
    they were. Runs last on smoke_run: it changes the workspace's corrections and adds a study
    (tests/test_serving.py, which copies the chain's workspace later, serves whatever it votes)."""
    from core.label_table import RECORD
    from results.tracking import find_runs
    data, ws = str(smoke_run / "data"), smoke_run / "ws"
    [line] = [ln for ln in (smoke_run / "run.out").read_text().splitlines() if ln.strip().startswith("python -m")]
    argv = shlex.split(line)[3:]                       # as printed, less `python -m orchestrator`
    suggested = Path(argv[argv.index("--corrections") + 1])
    assert suggested.parent == ws / "results" / "audit" / "run-all" and "--smoke-test" in argv
    ages(smoke_run / "data", suggested, 20)            # the user's edit of the suggestions
    recorded = json.loads((ws / RECORD).read_text())
    assert main(["ensemble", "--data", data, "--workspace", str(ws), "--corrections", str(suggested)]) == 2
    assert "rerun `python -m orchestrator preprocess`" in capsys.readouterr().err
    assert json.loads((ws / RECORD).read_text()) == recorded   # refused: the old corrections stay
    assert main(argv) == 0
    assert "study:      run-2 (the labels changed" in capsys.readouterr().out
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    old, new = (find_runs(uri, study=s, phase="cv") for s in ("run-all", "run-2-all"))
    assert len(new) == 2 and set(new["status"]) == {"FINISHED"} and len(old) == 2   # the old study stays
    assert set(new["tags.labels"]).isdisjoint(set(old["tags.labels"]))
    assert json.loads((ws / RECORD).read_text())["path"] == str(suggested.resolve())
    sub = pd.read_csv(ws / "results" / "submission.csv")
    assert (sub["ans"] % 3 == 0).mean() > 0.5, "the new study did not learn the corrected ages (<30)"
    # the old study cannot go on with the new labels
    assert main(["retrain", "--data", data, "--workspace", str(ws), "--head", "all", "--study", "run-all"]) == 2
    assert "trained on another label table" in capsys.readouterr().err


def test_budget_is_honoured(budget_run):
    """`run --budget 200s` on demo data (benchmarks/quality.py --smoke, run once per suite)."""
    assert budget_run["budget_s"] == 200
    assert budget_run["wall_s"] <= 1.1 * budget_run["budget_s"], f"run took {budget_run['wall_s']:.0f} s of a 200 s budget"
    assert (Path(budget_run["workspace"]) / "results" / "submission.csv").is_file()


def test_a_budget_run_accounts_for_its_reserve(budget_run):
    """WS/results/budget.json says what the ensemble and the audit were reserved and took, step by
    step (the reserve's model is fitted from it), and benchmarks/quality.py reports it."""
    use = json.loads((Path(budget_run["workspace"]) / "results" / "budget.json").read_text())
    assert use["budget_s"] == 200 and use["reserve_s"] > 0 and use["models"] >= 1 and use["n_eval"] > 0
    steps = use["ensemble_steps"]
    assert list(steps) == ["models", "oof", "calibration", "prediction", "report", "record"]
    assert 0 < sum(steps.values()) <= use["ensemble"] + 0.1
    assert use["audit"] > 0 and use["ensemble"] + use["audit"] < use["seconds"] <= budget_run["wall_s"]
    assert (budget_run["reserve_s"], budget_run["ensemble_s"]) == (use["reserve_s"], use["ensemble"])


def test_budget_trials_train_to_their_deadline_and_end_annealed(budget_run):
    """Every cv and full-data trial of the budget run anneals its learning rate to its deadline
    (trainables/schedule.py): whatever epoch the deadline cut, the last rate is near zero."""
    from mlflow import MlflowClient
    from results.tracking import find_runs
    uri = f"sqlite:///{Path(budget_run['workspace']).resolve()}/mlflow.db"
    client = MlflowClient(uri)
    for phase in ("cv", "full"):
        runs = find_runs(uri, phase=phase)
        assert len(runs) == 2, (phase, len(runs))
        for run_id, params in zip(runs["run_id"], runs["params.lr"]):   # every trial logs its peak rate
            lrs = [m.value for m in sorted(client.get_metric_history(run_id, "lr"), key=lambda m: m.step)]
            assert lrs and lrs[-1] < 0.05 * float(params), (phase, lrs)   # annealed, wherever it ended
            assert max(lrs) <= float(params) * 1.0001
            assert len(lrs) == 1 or max(lrs) > 0.05 * float(params)      # epochs before the last trained


def test_the_default_backbone_fine_tunes_the_packaged_weights_beside_a_head_of_its_own(tmp_path):
    """`run` as a user starts it (with a seed of its own), on its default backbone (core.labels.RUN_BACKBONE: Lite0 from
    the pip-installed ImageNet weights, not a scratch model), at tiny scale: 1 epoch, 2 folds, one
    full-data model, 8 training persons. A submission comes out, and the logged models carry the
    package's backbone (a few steps of fine-tuning move it little; a fresh init would not).
    With `--head-backbone gender=resnet10t-64` gender also trains a model of its own (study
    run-gender, scratch ResNet10t at 64 px, the same folds), and the ensemble votes gender with it;
    `run`'s default age head (options.RUN_AGE_HEAD) gives the joint model, cv and full-data, the
    cumulative-logit age head."""
    import torch
    from core.labels import BACKBONES, RUN_BACKBONE
    from results.tracking import download_model, find_runs
    from trainables.models import load_model_file
    from trainables.weights import SOURCES, read_state_dict, source_file
    bb = BACKBONES[RUN_BACKBONE]
    data, ws = tmp_path / "data", tmp_path / "ws"
    write_demo_data(data, DemoSpec(train_persons=8, eval_persons=2))
    assert main(["run", "--data", str(data), "--workspace", str(ws), "--epochs", "1", "--folds", "2",
                 "--full-seeds", "1", "--batch-size", "16", "--seed", "5", "--head-backbone", "gender=resnet10t-64"]) == 0
    sub = pd.read_csv(ws / "results" / "submission.csv")
    assert list(sub["ImageID"]) == list(pd.read_csv(data / "eval" / "info.csv")["ImageID"])
    uri = f"sqlite:///{ws.resolve()}/mlflow.db"
    runs = find_runs(uri, head="all")
    trials = runs[runs["tags.phase"].isin(["cv", "full"])]
    assert sorted(trials["tags.phase"]) == ["cv", "cv", "full"] and set(trials["status"]) == {"FINISHED"}
    assert set(trials["params.model"]) == {bb.model} and set(trials["params.pretrained"]) == {bb.pretrained}
    assert set(trials["params.img_size"]) == {str(bb.img_size)}
    # --seed is the study's: its folds, and every trial's seed (the full-data model's too)
    assert set(trials["params.seed"]) == {"5"} and all("person_k2_seed5" in f for f in trials["tags.input.folds"])
    stem = read_state_dict(source_file(SOURCES[bb.pretrained]))["_conv_stem.weight"].flatten()
    for run_id in trials["run_id"]:
        model, cfg = load_model_file(download_model(uri, run_id, tmp_path / "dl" / run_id))
        w = model.state_dict()["conv_stem.weight"].flatten()
        assert cfg.pretrained == bb.pretrained and torch.nn.functional.cosine_similarity(w, stem, dim=0) > 0.9
        assert cfg.age_head == "ordinal" and type(model.get_classifier()).__name__ == "OrdinalClassifier"
    own = find_runs(uri, head="gender")
    own = own[own["tags.phase"].isin(["cv", "full"])]
    assert sorted(own["tags.phase"]) == ["cv", "cv", "full"] and set(own["status"]) == {"FINISHED"}
    assert (set(own["params.model"]), set(own["params.img_size"]), set(own["params.pretrained"])) == (
        {"resnet10t"}, {"64"}, {"none"})
    assert set(own["tags.input.folds"]) == set(trials.loc[trials["tags.phase"] == "cv", "tags.input.folds"])
    vote = find_runs(uri, role="ensemble").iloc[0]
    assert vote["params.study"] == "mask=run-all,gender=run-gender,age=run-all"
    assert (vote["params.models_gender"], vote["params.models_mask"]) == ("3", "3")   # each its study's 2 folds + 1 full
