"""The registered ensemble served as a user serves it: `mlflow models serve -m models:/NAME@ALIAS
--env-manager local` on 127.0.0.1, answering real photos sent over HTTP with the classes
submission.csv holds for them.

The models are the suite's smoke chain's (conftest's smoke_chain: `run --smoke-test` on demo data).
The eval set is the demo's eval photos plus, where the real-face set is present, real faces of
three other persons (MTCNN finds them, where the drawn demo faces mostly fall back to the prior
box); `preprocess` crops them, `ensemble` votes and logs the model, `promote` registers it. The
server runs where this checkout cannot be imported, so the model loads the code it carries.
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, UTKMASK, UTKMASK_ENV, utkmask_available

from core.workspace import Workspace

NAME, ALIAS = "served-ensemble", "champion"
UTK_PERSONS = 3          # real-face eval persons (7 photos each) added to the demo's eval set


def _add_real_faces(data: Path, tmp: Path) -> int:
    """Appends UTK_PERSONS persons of the real-face set (laid out by its own script) to the eval set."""
    persons = (UTKMASK / "persons.txt").read_text().splitlines()[40:40 + UTK_PERSONS]
    (tmp / "persons.txt").write_text("\n".join(persons) + "\n")
    subprocess.run([sys.executable, str(UTKMASK / "make_utkmask.py"), "eval", str(UTKMASK / "faces"),
                    str(UTKMASK / "landmarks.csv"), str(tmp / "persons.txt"), str(tmp / "utk")],
                   check=True, capture_output=True)
    info = pd.read_csv(tmp / "utk" / "eval" / "info.csv")
    for image_id in info["ImageID"]:
        shutil.copy2(tmp / "utk" / "eval" / "images" / image_id, data / "eval" / "images" / image_id)
    ours = pd.read_csv(data / "eval" / "info.csv")
    pd.concat([ours, info[ours.columns]]).to_csv(data / "eval" / "info.csv", index=False)
    return len(info)


@pytest.fixture(scope="module")
def registered(smoke_chain, tmp_path_factory):
    """(data, workspace, number of real-face photos): the smoke chain's trained runs and crops in
    a workspace of its own (its store copied), the eval set cropped and voted on, the ensemble
    model registered as NAME@ALIAS."""
    from orchestrator.infra.ray_session import ray_session
    from orchestrator.stages.ensemble import EnsembleOptions, ensemble
    from orchestrator.stages.preprocess import preprocess
    from orchestrator.stages.promote import promote
    tmp = tmp_path_factory.mktemp("serving")
    data = Path(shutil.copytree(smoke_chain / "data", tmp / "data"))   # copy2: mtimes kept, crops stay cached
    ws = Workspace(tmp / "ws")
    # the store is copied (its artifacts stay where the chain wrote them); Tune's state is not needed
    shutil.copytree(smoke_chain / "ws", ws.root, ignore=shutil.ignore_patterns("tune", "mlartifacts"))
    real = _add_real_faces(data, tmp) if utkmask_available() else 0
    if real:
        with ray_session(num_cpus=2):
            preprocess(data, ws.make(), progress=False)
    ensemble(data, ws, EnsembleOptions(eval_vote="full"))   # as `run` votes: the full-data models
    promote(ws.tracking_uri(), name=NAME, alias=ALIAS)
    return data, ws, real


def test_the_registered_model_carries_its_code_and_no_pickle(registered):
    import yaml
    from mlflow import MlflowClient
    _, ws, _ = registered
    client = MlflowClient(ws.tracking_uri())
    version = client.get_model_version_by_alias(NAME, ALIAS)
    assert version.source.startswith("models:/m-"), version.source   # the ensemble run's logged model
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    folder = Path(model.artifact_location.removeprefix("file://"))
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    conf = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert conf["loader_module"] == "serving.ensemble_model" and conf["code"] == "code"
    assert {"code/serving/ensemble_model.py", "code/serving/photo_crop.py", "data/ensemble/ensemble.json"} <= files
    # the serving package and the layers below it, nothing of the CLI or the stages
    assert {f.split("/")[1] for f in files if f.startswith("code/")} == {"core", "trainables", "results", "serving"}
    assert not any(f.endswith((".pkl", ".pickle")) or "__pycache__" in f for f in files)
    spec = json.loads((folder / "data" / "ensemble" / "ensemble.json").read_text())
    assert spec["face"]["settings"]["size"] == 224 and len(spec["face"]["prior"]) == 4


def test_a_photo_is_cropped_as_preprocess_cropped_it(crops_ws):
    """What the served model runs on a photo makes each eval image's crop file byte for byte."""
    from core.manifest import read_manifest
    from orchestrator.stages.preprocess import crop_priors
    from serving.photo_crop import PhotoCropper
    data, ws = crops_ws
    ev = read_manifest(ws.manifest).query("split == 'eval'")
    got = PhotoCropper(*crop_priors(ws)).crop([(data / p).read_bytes() for p in ev["path"]])
    assert [g.method for g in got] == ev["method"].tolist()
    assert [g.crop for g in got] == [(ws.crops / c).read_bytes() for c in ev["crop"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_checkout(tmp: Path) -> dict:
    """An environment where this checkout is not importable (an editable install's finder and the
    checkout's path are dropped at start-up), so a served model must bring its own code."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        f"sys.path[:] = [p for p in sys.path if os.path.realpath(p or '.') != {str(ROOT)!r}]\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the environment's bin on PATH, as in an activated venv: the command starts its `uvicorn`
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env | {"PYTHONPATH": str(site), "PATH": path}


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    """`mlflow models serve` of NAME@ALIAS on a free loopback port; its base URL. Killed at the end
    with its process group (the command starts the web server as a child)."""
    _, ws, _ = registered
    tmp = tmp_path_factory.mktemp("server")
    env = _without_checkout(tmp) | {"MLFLOW_TRACKING_URI": ws.tracking_uri()}
    hidden = subprocess.run([sys.executable, "-c", "import orchestrator"], cwd=tmp, env=env, capture_output=True)
    assert hidden.returncode != 0, "the checkout is still importable: the server would not test the model's own code"
    port = _free_port()
    log = tmp / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@{ALIAS}",
                                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, log)
        yield base
    finally:
        _stop(proc)


def _stop(proc) -> None:
    """SIGTERM to the server's process group (the web server is its child), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:   # the group is gone already
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _wait_ready(base: str, proc, log: Path, timeout: float = 180) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer /ping in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _invoke(base: str, columns: list[str], rows: list[list[bytes]]) -> tuple[int, dict]:
    """POST /invocations as MLflow's REST format has it: binary columns as base64 text."""
    body = {"dataframe_split": {"columns": columns,
                                "data": [[base64.b64encode(v).decode() for v in row] for row in rows]}}
    req = urllib.request.Request(f"{base}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _classes_of(server: str, data: Path, image_ids) -> pd.DataFrame:
    status, out = _invoke(server, ["photo"], [[(data / "eval" / "images" / i).read_bytes()] for i in image_ids])
    assert status == 200, out
    got = pd.DataFrame(out["predictions"])
    assert (got["class"] == got["mask"] * 6 + got["gender"] * 3 + got["age"]).all()
    return got


def test_served_model_answers_demo_photos_as_the_submission(registered, server):
    data, ws, real = registered
    sub = pd.read_csv(ws.results / "submission.csv").iloc[:len(pd.read_csv(data / "eval" / "answers.csv"))]
    got = _classes_of(server, data, sub["ImageID"])
    assert got["class"].tolist() == sub["ans"].tolist()

    # a caller with a crop still sends it (column image)
    from core.manifest import read_manifest
    m = read_manifest(ws.manifest).set_index("image_id")
    crop = (ws.crops / m.at[sub["ImageID"].iloc[0], "crop"]).read_bytes()
    status, out = _invoke(server, ["image"], [[crop]])
    assert status == 200 and out["predictions"][0]["class"] == sub["ans"].iloc[0], out
    assert out["predictions"][0]["face"] == "given"


def test_served_model_answers_real_faces_as_the_submission(registered, server):
    data, ws, real = registered
    if not real:
        pytest.skip(f"real-face set not found at {UTKMASK} (set ${UTKMASK_ENV})")
    sub = pd.read_csv(ws.results / "submission.csv").tail(real)
    got = _classes_of(server, data, sub["ImageID"])
    assert got["class"].tolist() == sub["ans"].tolist()
    assert (got["face"] == "detect").mean() >= 0.5, got["face"].tolist()   # MTCNN found the real faces


def test_a_bad_photo_gets_a_400_naming_it_and_the_server_keeps_answering(registered, server):
    data, ws, _ = registered
    sub = pd.read_csv(ws.results / "submission.csv")
    photo = (data / "eval" / "images" / sub["ImageID"].iloc[-1]).read_bytes()
    for column, bad, why in (("photo", b"this is not a photo", "row 1: not an image PIL can read"),
                             ("photo", b"", "row 1: empty photo"),
                             ("image", b"\xff\xd8 a crop", "row 1: image: not an image PIL can read")):
        status, out = _invoke(server, [column], [[photo], [bad]])
        assert status == 400, out
        assert why in out["message"] and "send JPEG or PNG" in out["message"], out["message"]
    status, out = _invoke(server, ["photo"], [[photo]])
    assert status == 200 and out["predictions"][0]["class"] == sub["ans"].iloc[-1], out
