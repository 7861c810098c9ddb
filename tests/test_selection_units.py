"""results/selection.py on a real MLflow store of tagged runs (no training, no artifacts): the
default voters (newest study, newest run per fold, newest retrain), the study that lost a fold,
the user's picks (run ids, runs:/ URIs, filters, registered versions) and every refusal's text."""
import pandas as pd
import pytest
from mlflow import MlflowClient

from core.errors import DataError
from results.selection import (ChosenModel, choose_models, default_models, models_table, parse_studies,
                               study_of)


class Store:
    """One sqlite store for the module (made once: its tables take a second or two)."""

    def __init__(self, root):
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.root = root
        self.ids: dict[str, str] = {}

    def experiment(self, name: str) -> str:
        return self.client.create_experiment(name, artifact_location=(self.root / name).as_uri())

    def run(self, exp: str, key: str, t: int, status: str = "FINISHED", folds: str | None = None, **tags) -> str:
        run = self.client.create_run(exp, start_time=t, tags=tags)
        if folds is not None:
            self.client.log_param(run.info.run_id, "folds", folds)
        self.client.set_terminated(run.info.run_id, status)
        self.ids[key] = run.info.run_id
        return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("selection"))
    a = s.experiment("a")
    # age: an older study s0, and s1 with fold 0 trained twice, its parent run and three retrains
    s.run(a, "s0-0", 50, folds="2", head="age", phase="cv", fold="0", study="s0")
    s.run(a, "s0-1", 51, folds="2", head="age", phase="cv", fold="1", study="s0")
    s.run(a, "s0-full", 52, head="age", phase="full", study="s0", retrain="q")
    s.run(a, "s1-parent", 99, head="age", phase="cv", study="s1", role="study")
    s.run(a, "s1-0-old", 100, folds="2", head="age", phase="cv", fold="0", study="s1")
    s.run(a, "s1-1", 101, folds="2", head="age", phase="cv", fold="1", study="s1")
    s.run(a, "s1-0", 105, folds="2", head="age", phase="cv", fold="0", study="s1")
    s.run(a, "s1-full-r0", 108, head="age", phase="full", study="s1", retrain="r0")
    s.run(a, "s1-full-r1a", 110, head="age", phase="full", study="s1", retrain="r1")
    s.run(a, "s1-full-r1b", 111, head="age", phase="full", study="s1", retrain="r1")
    s.run(a, "g1-0", 200, folds="1", head="gender", phase="cv", fold="0", study="g1")
    s.run(a, "m1-0", 300, folds="1", head="mask", phase="cv", fold="0", study="m1", labels="h1")
    s.run(a, "untagged", 400, phase="cv")
    s.run(a, "ensemble", 401, head="age", phase="cv", role="ensemble")
    b = s.experiment("b")   # a joint model's study, and a study that lost folds
    s.run(b, "j-0", 10, head="all", phase="cv", fold="0", study="j")
    s.run(b, "x-0", 20, folds="3", head="gender", phase="cv", fold="0", study="x")
    s.run(b, "x-1-failed", 21, "FAILED", folds="3", head="gender", phase="cv", fold="1", study="x")
    s.experiment("c")   # nothing trained
    return s


def picked(chosen):
    """head -> [(run key, source)] of choose_models' answer."""
    return {head: [(c.run_id, c.source) for c in models] for head, models in chosen.items()}


def test_the_default_voters_are_the_newest_studys_newest_folds_and_newest_retrain(store):
    """a fold trained twice votes with its newer run, a study's parent run never votes, every
    full-data run of the newest retrain votes (one per seed)."""
    ids = store.ids
    got = default_models(store.client, store.client.get_experiment_by_name("a").experiment_id, "a", "age", None, True)
    assert [c.run_id for c in got] == [ids["s1-0"], ids["s1-1"], ids["s1-full-r1b"], ids["s1-full-r1a"]]
    assert got[0] == ChosenModel("age", ids["s1-0"], "cv", "0", "s1", "default", "age", "", "")
    assert [(c.phase, c.fold, c.has_oof) for c in got] == [("cv", "0", True), ("cv", "1", True), ("full", "", False),
                                                           ("full", "", False)]
    older = default_models(store.client, store.client.get_experiment_by_name("a").experiment_id, "a", "age", "s0", False)
    assert [c.run_id for c in older] == [ids["s0-0"], ids["s0-1"]]


def test_a_study_that_lost_folds_names_each_and_the_resume(store):
    exp = store.client.get_experiment_by_name("b").experiment_id
    with pytest.raises(DataError) as err:
        default_models(store.client, exp, "b", "gender", None, True)
    resume = ("continue the study with `python -m orchestrator tune --head gender --study x --phase cv --resume` "
              "(or rerun `run`), or pick runs with --runs")
    assert err.value.problems == [
        f"study 'x', head gender: cv fold 1 has no finished run (MLflow run {store.ids['x-1-failed']} is FAILED); "
        + resume,
        "study 'x', head gender: cv fold 2 of 3 has no MLflow run at all (its trial stopped before it logged "
        "anything); " + resume]


def test_a_head_without_models_names_the_study_and_the_command(store):
    for experiment, study, where in (("c", None, "any study"), ("a", "zz", "study 'zz'")):
        exp = store.client.get_experiment_by_name(experiment).experiment_id
        with pytest.raises(DataError) as err:
            default_models(store.client, exp, experiment, "mask", study, True)
        assert err.value.problems == [
            f"head mask has no models: no finished cv runs tagged head=mask in {where} of experiment {experiment!r} at "
            f"{store.uri}; run `python -m orchestrator tune --head mask` (and retrain), or pick runs with --runs"]


def test_picks_replace_the_default_of_their_head_only_and_vote_once(store):
    """a run id (padded), its runs:/ URI and a filter (its runs newest first); a run named twice
    votes once, as first named."""
    ids = store.ids
    got = choose_models(store.client, [f" {ids['s0-0']} ", f"runs:/{ids['s0-0']}/model", "tags.study = 's0'"],
                        experiment="a", include_full=False)
    assert picked(got) == {
        "mask": [(ids["m1-0"], "default")], "gender": [(ids["g1-0"], "default")],
        "age": [(ids["s0-0"], "run id"), (ids["s0-full"], "filter: tags.study = 's0'"),
                (ids["s0-1"], "filter: tags.study = 's0'")]}
    assert got["mask"][0].labels == "h1"


def test_a_study_per_head_and_a_joint_model_voting_for_every_head(store):
    ids = store.ids
    got = choose_models(store.client, experiment="a", study=parse_studies("age=s0"), include_full=False)
    assert [c.run_id for c in got["age"]] == [ids["s0-0"], ids["s0-1"]]
    joint = choose_models(store.client, [ids["j-0"]], experiment="b")
    assert {h: [(c.run_id, c.head, c.model_target) for c in m] for h, m in joint.items()} == {
        h: [(ids["j-0"], h, "all")] for h in ("mask", "gender", "age")}
    table = models_table(joint)
    assert table["head"].tolist() == ["mask", "gender", "age"] and list(table.columns) == [
        "head", "run_id", "phase", "fold", "study", "source", "target", "labels", "model_id"]


def test_a_registered_version_votes_by_its_alias_or_number(store):
    client, ids = store.client, store.ids
    client.create_registered_model("age-head")
    mv = client.create_model_version("age-head", f"runs:/{ids['s0-1']}/model", run_id=ids["s0-1"])
    client.set_registered_model_alias("age-head", "champion", mv.version)
    for uri in ("models:/age-head@champion", f"models:/age-head/{mv.version}"):
        got = choose_models(store.client, [uri], experiment="a", include_full=False)
        assert picked(got)["age"] == [(ids["s0-1"], uri)]
    with pytest.raises(DataError, match=r"models:/age-head@nobody: no such registered model version at .*; "
                                        "register a run and set the alias in the MLflow UI"):
        choose_models(store.client, ["models:/age-head@nobody"], experiment="a")
    with pytest.raises(DataError, match=r"'models:/age-head' is not a registered model URI; write "
                                        "models:/NAME@ALIAS or models:/NAME/VERSION"):
        choose_models(store.client, ["models:/age-head"], experiment="a")


def test_picks_that_cannot_vote_are_refused_whole(store):
    ids, uri = store.ids, store.uri
    cases = [
        ([], "nope", [f"MLflow experiment 'nope' does not exist at {uri}; run `python -m orchestrator tune` first, "
                      "or pass the right --tracking-uri"]),
        (["0" * 32, "f" * 32], "a", [f"MLflow run {r} does not exist at {uri}; copy the run id from the MLflow UI "
                                     "(or check --tracking-uri)" for r in ("0" * 32, "f" * 32)]),
        ([ids["untagged"]], "a", [f"MLflow run {ids['untagged']} has no valid head tag (mask/gender/age/all); tag it "
                                  "or pick another run"]),
        ([ids["ensemble"]], "a", [f"run id: MLflow run {ids['ensemble']} is a whole ensemble, not a member model; "
                                  "load it with mlflow.pyfunc.load_model, or pick member models (trial runs) with --runs"]),
        (["tags.study = 'none'"], "a", ["MLflow filter \"tags.study = 'none'\" matches no model run (phase "
                                        "search/cv/full) in experiment 'a'; loosen the filter"]),
        ([f"m-{'0' * 32}"], "a", [f"logged model m-{'0' * 32} does not exist at {uri}; copy its id from the run's "
                                  "Logged models in the MLflow UI (or check --tracking-uri)"]),
    ]
    for picks, experiment, problems in cases:
        with pytest.raises(DataError) as err:
            choose_models(store.client, picks, experiment=experiment)
        assert err.value.problems == problems
    with pytest.raises(DataError) as err:
        choose_models(store.client, ["tags.study === 'x'"], experiment="a")
    [problem] = err.value.problems
    assert problem.startswith("MLflow filter \"tags.study === 'x'\" is not valid: ") and problem.endswith(
        "; see the search syntax in the MLflow UI (e.g. tags.study = 'x')")


def test_study_flags_name_one_study_or_one_per_head():
    assert parse_studies(None) is None and parse_studies("") is None and parse_studies("s1") == "s1"
    assert parse_studies(" mask = a ,, age=b ,") == {"mask": "a", "age": "b"}
    assert study_of({"mask": "a"}, "mask") == "a" and study_of({"mask": "a"}, "age") is None
    assert study_of("s1", "age") == "s1" and study_of(None, "age") is None
    for text, problem in (("hair=x", "--study 'hair=x': unknown head 'hair'; write HEAD=STUDY with HEAD one of "
                                     "mask, gender, age"),
                          ("mask=a,age=", "--study 'mask=a,age=': no study name for head age; write age=STUDY"),
                          ("mask=a,mask=b", "--study 'mask=a,mask=b': head mask is named twice")):
        with pytest.raises(DataError) as err:
            parse_studies(text)
        assert err.value.problems == [problem]


def test_an_empty_choice_makes_an_empty_table():
    assert models_table({"age": []}).empty and isinstance(models_table({}), pd.DataFrame)
