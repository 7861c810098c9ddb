import inspect
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from benchmarks.realfaces import ENV as UTKMASK_ENV
from benchmarks.realfaces import utkmask_available as _utk_available
from benchmarks.realfaces import utkmask_folder
from tests.bad_input import write_records

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # tests must not write ~/.ray/auth_token
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Ray nodes and drivers use 127.0.0.1, not the machine's network address (tests/cluster/ starts
# multi-node clusters on this machine; nothing may listen beyond loopback)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# The generated bad-input tests: a fixed seed and a bounded count in the suite (seconds); the long
# sweep (`pytest --hypothesis-profile long`, benchmarks/bad_input_table.py --long) tries 50x more.
_GENERATED = dict(derandomize=True, deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("default", max_examples=20, **_GENERATED)   # x each test's share (tests/test_bad_input.py)
settings.register_profile("long", max_examples=1000, **_GENERATED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]
UTKMASK = utkmask_folder()   # the real-face set: $UTKMASK_DIR (benchmarks/realfaces.py)

# The tiers (README "Tests"), given by rule so that a new test file falls into one by itself:
#   ray      starts Ray, trains, or starts a process of the CLI: by its body or a fixture it uses
#            (`make test-quick` runs neither ray nor slow; `make test` runs all but slow)
#   slow     `make test-slow`: a ray test that needs more than the suite's one shared local Ray and
#            its seconds: a Ray of its own shape (simulated multi-node clusters under tests/cluster/,
#            logical GPUs by own_ray), an injected fault (tests/fault_gate.py's Crash and Gate), a
#            wall-clock budget (the budget_run fixture), a benchmark smoke (tests/test_benchmark*.py),
#            or a mark of its own
#   utkmask  reads the real-face set (the utkmask_dir fixture); skipped where it is absent
SLOW_FOLDERS = {"cluster"}
SLOW_FILES = re.compile(r"test_benchmark")
HEAVY_FIXTURES = {"crops_ws", "budget_run", "ray_local", "utkmask_dir"}
HEAVY_CALL = re.compile(r"\b(ray|ray_session|init_ray|own_ray|main|tune_head|retrain_head|preprocess|ensemble|reproduce|"
                        r"subprocess|Popen|benchmark_smoke|workspace_sharing_crops)\s*[.(]")
SLOW_FIXTURES = {"budget_run"}
SLOW_CALL = re.compile(r"\b(own_ray|Crash|Gate)\s*\(")


def _source(fn) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


def _uses(item, fixtures: set[str], call: re.Pattern) -> bool:
    """The test uses one of ``fixtures``, or its own body or a fixture it uses (its whole closure)
    makes a ``call``. Only functions defined under tests/ are read: pytest's own fixtures never are."""
    names = set(getattr(item, "fixturenames", ()))
    if names & fixtures or call.search(_source(getattr(item, "function", None))):
        return True
    defs = getattr(item, "_fixtureinfo", None)
    for name in names:
        for fd in (defs.name2fixturedefs.get(name, ()) if defs else ()):
            fn = fd.func
            if str(ROOT / "tests") in (inspect.getsourcefile(fn) or "") and call.search(_source(fn)):
                return True
    return False


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        path = Path(str(item.fspath)).relative_to(ROOT / "tests")
        heavy = _uses(item, HEAVY_FIXTURES, HEAVY_CALL)
        if heavy:
            item.add_marker(pytest.mark.ray)
        if heavy and (SLOW_FOLDERS & set(path.parts[:-1]) or SLOW_FILES.match(path.name)
                      or _uses(item, SLOW_FIXTURES, SLOW_CALL)):
            item.add_marker(pytest.mark.slow)
        if "utkmask_dir" in item.fixturenames or "UTKMASK" in _source(getattr(item, "function", None)):
            item.add_marker(pytest.mark.utkmask)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The built-in demo data set, made once per session (read-only for tests)."""
    from core.demo_data import DemoSpec, write_demo_data
    return write_demo_data(tmp_path_factory.mktemp("demo"), DemoSpec(train_persons=30, eval_persons=8))


@pytest.fixture
def demo_copy(demo_dir, tmp_path) -> Path:
    """A private copy of the demo data that a test may break."""
    return Path(shutil.copytree(demo_dir, tmp_path / "data"))


def utkmask_available() -> bool:
    return _utk_available(UTKMASK)


@pytest.fixture(scope="session")
def utkmask_dir(tmp_path_factory) -> Path:
    """60 real persons laid out by the real-face set's own script (train and eval)."""
    if not utkmask_available():
        pytest.skip(f"real-face set not found at {UTKMASK} (set ${UTKMASK_ENV})")
    out = tmp_path_factory.mktemp("utkmask")
    persons = (UTKMASK / "persons.txt").read_text().splitlines()
    (out / "train.txt").write_text("\n".join(persons[:40]) + "\n")
    (out / "eval.txt").write_text("\n".join(persons[40:60]) + "\n")
    for split, lst in (("train", "train.txt"), ("eval", "eval.txt")):
        subprocess.run([sys.executable, str(UTKMASK / "make_utkmask.py"), split, str(UTKMASK / "faces"),
                        str(UTKMASK / "landmarks.csv"), str(out / lst), str(out / "data")],
                       check=True, capture_output=True)
    return out / "data"


# One local Ray for the whole suite: every test that runs Ray in this process shares it
# (`ray_session` and `init_ray` reuse an open session), instead of starting one each (seconds apiece).
RAY_OPTS = dict(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2)


def open_shared_ray() -> None:
    """Start the suite's local Ray unless one is open. The test gates' folder goes into the
    environment first: Ray's workers inherit it from their raylet (tests/fault_gate.py)."""
    import ray

    from tests.fault_gate import gates_folder
    gates_folder()
    if not ray.is_initialized():
        ray.init(address="local", **RAY_OPTS)   # "local": never join another cluster on this machine


@contextmanager
def own_ray(**init):
    """A local Ray of a test module's own shape (logical GPUs, say) in place of the shared one,
    which the next test that needs it opens again."""
    import ray

    from tests.fault_gate import gates_folder
    gates_folder()
    ray.shutdown()
    ray.init(address="local", **{**RAY_OPTS, **init})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _shared_ray(request):
    """Tests that run Ray (the `ray` tier) find the shared Ray open; it closes when the suite ends."""
    if request.node.get_closest_marker("ray") and not request.node.get_closest_marker("slow"):
        open_shared_ray()
    yield


def pytest_sessionfinish(session, exitstatus) -> None:
    if "ray" in sys.modules:
        import ray
        ray.shutdown()


@pytest.fixture
def ray_local() -> None:
    """The shared local Ray (2 CPUs, no GPU), for tests that use Ray directly."""
    open_shared_ray()


@pytest.fixture(scope="session")
def crops_ws(demo_dir, tmp_path_factory):
    """(data_dir, Workspace) whose manifest + crops follow core/manifest.py.

    The real preprocessing stage (MTCNN on Ray; the drawn demo faces mostly fall back to
    the prior box), run once per session on the suite's shared Ray.
    """

    from core.faces import CropSettings
    from core.workspace import Workspace
    from orchestrator.stages.preprocess import preprocess
    ws = Workspace(tmp_path_factory.mktemp("ws")).make()
    open_shared_ray()
    preprocess(demo_dir, ws, CropSettings(size=96), progress=False)
    return demo_dir, ws


@pytest.fixture(scope="session", autouse=True)
def faults_record(tmp_path_factory) -> Path:
    """Where the fault tests leave their records ($FAULTS_RECORD, else a temporary folder of this test run):
    benchmarks/faults_table.py's smoke test then tables the records this suite made."""
    os.environ.setdefault("FAULTS_RECORD", str(tmp_path_factory.mktemp("faults")))
    return Path(os.environ["FAULTS_RECORD"])


@pytest.fixture(scope="session", autouse=True)
def bad_input_record(tmp_path_factory) -> Path:
    """Where the bad-input tests' counts go ($BAD_INPUT_RECORD, else a folder of this test run),
    written when the session ends (tests/bad_input.py)."""
    os.environ.setdefault("BAD_INPUT_RECORD", str(tmp_path_factory.mktemp("bad-input")))
    folder = Path(os.environ["BAD_INPUT_RECORD"])
    yield folder
    write_records(folder)


def benchmark_smoke(script: str, *args: str) -> str:
    """``benchmarks/SCRIPT --smoke ARGS`` as a user starts it; its stdout (fails with its output's tail)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def ages(data: Path, path: Path, age: int) -> Path:
    """A corrections file that sets every training person's age."""
    import pandas as pd
    persons = pd.read_csv(data / "train" / "train.csv", dtype=str)["id"]
    pd.DataFrame({"id": persons, "field": "age", "value": str(age)}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def smoke_chain(tmp_path_factory) -> Path:
    """One `run --smoke-test` chain for the suite (preprocess, tune, retrain, ensemble, audit): a
    folder with data/, ws/ and run.out (what the run printed). Its corrections make every training
    person 70. tests/test_run.py checks the chain, then adds a study to it; tests/test_serving.py
    serves a copy of what it holds then."""
    import io
    from contextlib import redirect_stdout

    from orchestrator.cli import main
    from core.demo_data import DemoSpec, write_demo_data
    root = tmp_path_factory.mktemp("run")
    write_demo_data(root / "data", DemoSpec(train_persons=16, eval_persons=4))
    corr = ages(root / "data", root / "corrections.csv", 70)
    out = io.StringIO()
    with redirect_stdout(out):   # what a user reads at the end (the audit's next command)
        assert main(["run", "--data", str(root / "data"), "--workspace", str(root / "ws"), "--smoke-test",
                     "--corrections", str(corr)]) == 0
    (root / "run.out").write_text(out.getvalue())
    return root


@pytest.fixture(scope="session")
def budget_run(tmp_path_factory) -> dict:
    """`benchmarks/quality.py --smoke` once per suite: `run --budget 200s` on demo data, scored.
    Its line of JSON (wall_s, budget_s, f1, ..., workspace, data) serves the benchmark smoke tests
    and tests/test_run.py's budget check (a `run --budget` costs the suite most of a minute)."""
    import json
    out = benchmark_smoke("quality.py", "--work", str(tmp_path_factory.mktemp("budget-run")))
    return json.loads(out.strip().splitlines()[-1])


def workspace_sharing_crops(src, root: Path, **kw):
    """A private workspace (own MLflow store and Tune storage) at ``root`` that reads the session's
    crops and manifest from ``src`` (a Workspace) instead of cropping again; ``kw`` go to Workspace."""
    from core.workspace import Workspace
    ws = Workspace(root, **kw)
    ws.root.mkdir(parents=True, exist_ok=True)
    (ws.root / "crops").symlink_to(src.crops)
    return ws.make()
