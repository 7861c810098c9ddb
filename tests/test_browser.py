"""The MLflow UI as a user meets it, in a real headless browser (`pytest -k browser`).

A smoke study (real Ray Tune trials) leaves a small real store; `mlflow server` serves it on
127.0.0.1; Debian's chromium, driven by Playwright, opens the experiment in the model-training
view, finds the trial runs by head and fold under their study, opens a trial's logged model,
registers it with the UI's Register model button and sets an alias; then
`ensemble --runs models:/NAME@ALIAS` votes with that version. Screenshots go to
WS/results/browser/. Outside CI the test skips where chromium or playwright is absent
(.ci/run installs both); in CI (``$CI`` set) their absence is a failure.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
from conftest import workspace_sharing_crops
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from orchestrator.cli import main
from orchestrator.stages.tune import TuneOptions, tune_head
from results.run_schema import EXPERIMENT, logged_model_id, ui_url

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
NAME, ALIAS = "browser-all-head", "champion"


def _missing() -> str:
    if CHROMIUM is None:
        return "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return ""


@pytest.fixture(scope="module")
def browser_ready():
    reason = _missing()
    if reason and os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def smoke_store(browser_ready, crops_ws, tmp_path_factory):
    """A real store: the cv phase of a smoke study of the joint model (2 folds, 2 trial runs)."""
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path_factory.mktemp("browser_ws"))
    tune_head(data, ws, "all", TuneOptions(smoke_test=True, phase="cv", num_samples=0, verbose=0, num_cpus=2))
    return data, ws


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(smoke_store):
    """`mlflow server` on 127.0.0.1 (one worker) over the smoke store; its base URL."""
    _, ws = smoke_store
    port = _free_port()
    log = open(ws.root / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", ws.tracking_uri()],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240   # a busy 2-core machine takes a minute to start it
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start: see {ws.root / 'mlflow-server.log'}")
                time.sleep(2)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _poll(what, timeout_s: float = 60):
    """``what()`` once it stops raising MlflowException (the UI's request may still be in flight)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            return what()
        except MlflowException:
            if time.time() > deadline:
                raise
            time.sleep(1)


def test_browser_register_a_trial_model_and_vote_with_its_alias(smoke_store, mlflow_ui):
    from playwright.sync_api import sync_playwright
    data, ws = smoke_store
    client = MlflowClient(ws.tracking_uri())
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    fold0 = client.search_runs([exp_id], "tags.role = 'trial' and tags.fold = '0'")[0]
    shots = ws.results / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        try:
            _runs_under_their_study(page, ui_url(mlflow_ui, exp_id), shots)
            _run_lists_its_logged_model(page, fold0.info.run_name, shots)
            _register_model(page, shots)
            version = _poll(lambda: client.get_model_version(NAME, "1"))
            assert version.run_id == fold0.info.run_id
            assert version.source == f"models:/{logged_model_id(client, fold0)}"
            _set_alias(page, mlflow_ui, shots)
            assert str(_poll(lambda: client.get_model_version_by_alias(NAME, ALIAS)).version) == "1"
        finally:
            page.screenshot(path=str(shots / "last.png"))
            browser.close()
    # the ensemble votes with the version the alias names (a joint model: every head)
    uri = f"models:/{NAME}@{ALIAS}"
    assert main(["ensemble", "--data", str(data), "--workspace", str(ws.root), "--runs", uri, "--tta", "none",
                 "--eval-vote", "all"]) == 0
    models = pd.read_csv(ws.results / "ensemble" / "models.csv")
    assert set(models["source"]) == {uri} and set(models["run_id"]) == {fold0.info.run_id}
    assert set(models["model_id"]) == {logged_model_id(client, fold0)} and len(models) == 3


def _runs_under_their_study(page, url: str, shots) -> None:
    page.goto(url)
    parent = page.locator("[role=row]", has_text="all · cv · study all-smoke").first
    parent.wait_for()
    assert page.get_by_text("Evaluation runs").count() == 0   # the model-training view, not GenAI's
    if page.get_by_role("button", name="Close").count():      # the assistant panel hides the table
        page.get_by_role("button", name="Close").first.click()
    parent.locator("button[data-component-id*=runnamecellrenderer]").click()   # expand the study
    for fold in (0, 1):
        page.get_by_role("link", name=f"all · cv · fold {fold} · ").first.wait_for()
    page.screenshot(path=str(shots / "01-runs.png"))


def _run_lists_its_logged_model(page, run_name: str, shots) -> None:
    page.get_by_role("link", name=run_name).first.click()
    page.get_by_text("Logged models (1)").wait_for()
    page.get_by_text(run_name).first.wait_for()
    page.screenshot(path=str(shots / "02-run.png"))


def _register_model(page, shots) -> None:
    page.get_by_role("link", name="model", exact=True).last.click()   # the logged model's page
    page.get_by_role("button", name="Register model").click()
    page.locator("#selectedModel").click()
    page.locator("[class*=select-item-option]", has_text="Create New Model").first.click()
    page.locator("#modelName").fill(NAME)
    page.screenshot(path=str(shots / "03-register.png"))
    page.get_by_test_id("confirm-register-model").click()


def _set_alias(page, base: str, shots) -> None:
    page.goto(f"{base}/#/models/{NAME}/versions/1")
    page.get_by_text("Aliases").first.wait_for()
    page.get_by_role("button", name="Add", exact=True).click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input").first.fill(ALIAS)
    page.keyboard.press("Enter")
    dialog.get_by_role("button", name="Save aliases").click()
    dialog.wait_for(state="hidden")
    page.get_by_text(ALIAS).first.wait_for()
    page.screenshot(path=str(shots / "04-alias.png"))
