"""What the orchestrator records about its own work stays true: a failed image is tried again, a
trial logs the code it ran, a fold without any run is seen, one `run` at a time works on a
study, a hub that refuses the weights is refused before Ray starts, and a killed trial's scratch
stays in its own folder, where its retry removes it."""
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT

from core.errors import DataError
from core.workspace import Workspace


@pytest.fixture(scope="module")
def private_temp():
    """A temp folder of this module's own, which the Ray workers started below inherit as the
    system's (TMPDIR): what a killed trial leaves in "the system temp dir" is counted here, apart
    from whatever else runs on this machine. Short, as Ray's socket paths must be."""
    folder = tempfile.mkdtemp(prefix="t", dir="/tmp")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    yield Path(folder)
    os.environ.pop("TMPDIR") if before is None else os.environ.__setitem__("TMPDIR", before)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def private_ray(private_temp):
    """A Ray of this module's own, started under the private TMPDIR its workers inherit."""
    from conftest import own_ray
    with own_ray(object_store_memory=128 * 1024**2):
        yield


# -- item 9: a failed image is tried again ------------------------------------------------
def test_an_image_fixed_in_place_is_cropped_on_the_rerun(ray_local, tmp_path):
    """A photo that a sync left as a placeholder of the right size and date (a cloud file not yet
    downloaded: as unreadable as one without permission, and as invisible to size and mtime)
    fails; once the real bytes arrive, same size and mtime, the rerun crops it."""
    from core.demo_data import DemoSpec, write_demo_data
    from orchestrator.stages.preprocess import preprocess
    data = write_demo_data(tmp_path / "data", DemoSpec(train_persons=2, eval_persons=1))
    rel = sorted(p.relative_to(data).as_posix() for p in (data / "train" / "images").rglob("normal.*"))[0]
    photo = data / rel
    good, st = photo.read_bytes(), photo.stat()
    photo.write_bytes(b"\0" * len(good))
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    ws = Workspace(tmp_path / "ws")
    first = preprocess(data, ws, progress=False).set_index("path")
    assert first.loc[rel, "error"] and first.loc[rel, "crop"] == "", first.loc[rel]
    photo.write_bytes(good)
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = preprocess(data, ws, progress=False)
    row = again.set_index("path").loc[rel]
    assert row["error"] == "" and row["crop"] and (ws.crops / row["crop"]).is_file(), row
    assert again.attrs["summary"].failed == 0
    assert again.attrs["summary"].skipped >= len(again) - 8   # the rest came from the cache


# -- item 10: the code a trial ran --------------------------------------------------------
def _pins(code: str):
    from orchestrator.study.pins import Pins
    return Pins(labels="l1", folds="person_k2_seed777-f1", crops="c1", settings="s1", code=code)


def test_a_resumed_study_logs_the_code_at_hand_not_the_first(tmp_path, caplog):
    """The pins a phase hands its trials (their input.code tag, which `reproduce` compares) name
    the code that runs now; the pin file keeps what the study started with."""
    from core.provenance import code_version
    from orchestrator.study.pins import check_study_data, pin_file, pin_study
    ws = Workspace(tmp_path / "ws").make()
    assert pin_study(ws, "s", _pins("commit-1")).code == "commit-1"
    assert pin_study(ws, "s", _pins("commit-2"), what="new phase").code == "commit-2"
    assert "other code than it started with (code commit-1 -> commit-2)" in caplog.text
    assert json.loads(pin_file(ws, "s").read_text())["pins"]["code"] == "commit-1"
    import pandas as pd

    from core.provenance import rows_hash
    rows = pd.DataFrame({"path": ["a.jpg"], "crop": ["a.crop.jpg"]})
    pin_study(ws, "r", replace(_pins("commit-1"), crops=rows_hash(rows, ("path", "crop"))))
    assert check_study_data(ws, "r", "l1", rows)["code"] == code_version()   # the retrain's


# -- item 11: a fold without any run ------------------------------------------------------
def test_a_fold_with_no_run_at_all_stops_the_vote(tmp_path):
    """Folds 0 and 1 of 3 finished; fold 2's trial died before its logger started, so MLflow has
    no run of it. The ensemble must not vote with two folds of three."""
    from mlflow_runs import log_model_run, store

    from results.selection import choose_models
    client = store(tmp_path / "ws")
    for head in ("mask", "gender", "age"):
        for fold in (0, 1):
            rid = log_model_run(client, tmp_path, head=head, phase="cv", fold=fold)
            client.log_param(rid, "folds", 3)
    with pytest.raises(DataError, match="cv fold 2 of 3 has no MLflow run at all") as err:
        choose_models(client)
    assert "--phase cv --resume" in str(err.value)
    for head in ("mask", "gender", "age"):
        client.log_param(log_model_run(client, tmp_path, head=head, phase="cv", fold=2), "folds", 3)
    assert [m.fold for m in choose_models(client)["mask"]] == ["0", "1", "2"]


# -- item 12: one `run` at a time -----------------------------------------------------------
def test_a_live_run_on_another_host_is_not_taken_for_dead(tmp_path):
    """The ledger of a run on another host, rewritten a moment ago, belongs to a live run (its
    processes cannot be seen from here); once its heartbeat is old, it counts as stopped."""
    from orchestrator.chain.ledger import run_ledger
    ws = Workspace(tmp_path / "ws").make()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ledger = ws.results / "run-run.json"
    ledger.write_text(json.dumps({"pid": 4242, "host": "another-host", "proc_start": "1", "used_s": 30}))
    with pytest.raises(DataError, match=r"another `run` \(pid 4242\) on host another-host"):
        with run_ledger(ws, "run", 100, uri, ["run-all"]):
            pass
    old = time.time() - 3600   # an hour without a heartbeat
    os.utime(ledger, (old, old))
    with run_ledger(ws, "run", 100, uri, ["run-all"]) as clock:
        assert clock.left() <= 70          # its 30 s count against the budget


_HOLD = """
import sys, time
from core.workspace import Workspace
from orchestrator.chain.ledger import run_ledger
ws = Workspace(sys.argv[1])
with run_ledger(ws, "run", None, sys.argv[2], ["run-all"]):
    print("working", flush=True)
    sys.stdin.readline()   # until the test says stop
"""


def test_two_runs_started_at_once_cannot_both_proceed(tmp_path):
    """The claim and the check are one step (a lock the system drops when its holder dies): a
    second run is refused even before the first has written its ledger."""
    from orchestrator.chain.ledger import run_ledger
    ws = Workspace(tmp_path / "ws").make()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = subprocess.Popen([sys.executable, "-c", _HOLD, str(ws.root), uri], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline().strip() == "working"
        (ws.results / "run-run.json").unlink(missing_ok=True)   # as if the first had not written it yet
        with pytest.raises(DataError, match="another `run` is working on study 'run'"):
            with run_ledger(ws, "run", None, uri, ["run-all"]):
                pass
    finally:
        first.stdin.close()
        first.wait(timeout=60)
    first_killed = subprocess.Popen([sys.executable, "-c", _HOLD, str(ws.root), uri], cwd=ROOT, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert first_killed.stdout.readline().strip() == "working"
    first_killed.kill()                                    # SIGKILL: no handler runs, the lock goes
    first_killed.wait(timeout=60)
    with run_ledger(ws, "run", None, uri, ["run-all"]):   # the dead run's ledger: a rerun proceeds
        pass


# -- item 13: a hub that refuses the weights --------------------------------------------------
class _Refusing(http.server.BaseHTTPRequestHandler):
    status = 404

    def do_HEAD(self):
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):   # quiet
        pass


@pytest.fixture
def refusing_hub():
    """A real HTTP server on the loopback that answers every request with ``status``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status,why", [(401, "gated or private"), (404, "no such repository or file")])
def test_a_hub_that_refuses_the_weights_stops_the_command_first(refusing_hub, tmp_path, status, why):
    """The check runs as a user runs it, in a fresh process pointed at the hub by HF_ENDPOINT,
    with an empty cache; a 401 (gated) or 404 (missing) is a PretrainedError naming the status."""
    server, url = refusing_hub
    server.RequestHandlerClass.status = status
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}
    code = ("from trainables.pretrained import PretrainedError, check_source\n"
            "try:\n    check_source('efficientnet_b3', 'hub')\nexcept PretrainedError as exc:\n"
            "    print('REFUSED', exc)\nelse:\n    print('ACCEPTED')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    assert f"HTTP {status}" in out.stdout and why in out.stdout and "cannot be fetched" in out.stdout


def test_a_weights_url_that_refuses_is_refused(refusing_hub, tmp_path, monkeypatch):
    """timm's plain-URL weights (no hub repo): a 401/404 answer is no download either."""
    from trainables.pretrained import _url_unreachable
    server, url = refusing_hub
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # an empty download cache
    for status in (401, 404):
        server.RequestHandlerClass.status = status
        assert _url_unreachable(f"{url}/weights/b3.pth").startswith(f"HTTP {status}")


# -- item 17: a killed trial's scratch ----------------------------------------------------
def test_a_killed_trials_scratch_stays_in_its_folder_and_its_retry_removes_it(private_ray, private_temp, crops_ws,
                                                                             tmp_path_factory):
    """The trial exits hard after its first checkpoint (its best model logged: a model file in
    its scratch); Tune retries it, which finds that scratch and removes it. Nothing of it is in
    the system's temp folder, and nothing is left once the trial finished."""
    from conftest import workspace_sharing_crops

    from orchestrator.stages.tune import TuneOptions, tune_head
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path_factory.mktemp("scratch_ws"))
    from tests.fault_gate import Crash
    with Crash("epoch", epoch=1, phase="search") as crash:     # exits after its first checkpoint
        tune_head(data, ws, "gender", TuneOptions(smoke_test=True, verbose=0, phase="search", num_samples=1,
                                                  trial=dict(epochs=2), study="scratch"))
    assert crash.crashed()                                        # the trial's process did exit mid-trial
    left = [p.name for p in private_temp.iterdir() if p.name != "ray"]
    assert not [n for n in left if n.startswith("best-")], left   # nothing in the system temp folder
    assert not [p for p in ws.scratch.rglob("*") if p.is_file()], list(ws.scratch.rglob("*"))


# -- the except audit: the errors each catch names still cover what damaged input raises ------
def _damaged(good: bytes, seed: int) -> bytes:
    """``good`` cut, with bytes flipped, or with foreign bytes spliced in (by seed)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, len(good)))
    if seed % 3 == 0:
        return good[:k]
    if seed % 3 == 1:
        out = bytearray(good)
        for i in rng.integers(0, len(good), 4):
            out[int(i)] ^= 0x5A
        return bytes(out)
    return good[:k] + rng.bytes(64) + good[k:]


@pytest.mark.parametrize("seed", range(12))
def test_a_damaged_manifest_is_a_data_error(tmp_path, seed):
    import pandas as pd

    from core.manifest import read_manifest
    path = tmp_path / "manifest.parquet"
    pd.DataFrame({"path": [f"train/{i}.jpg" for i in range(50)], "x1": range(50)}).to_parquet(path, index=False)
    path.write_bytes(_damaged(path.read_bytes(), seed))
    with pytest.raises(DataError, match="manifest"):
        read_manifest(path)


@pytest.mark.parametrize("seed", range(12))
def test_a_damaged_weights_file_is_a_weights_error(tmp_path, seed):
    import torch
    from safetensors.torch import save_file

    from trainables.weights import WeightsError, read_state_dict
    sd = {"a": torch.arange(40.0).reshape(8, 5), "b": torch.arange(7)}
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"w{suffix}"
        torch.save(sd, path) if suffix == ".pt" else save_file(sd, str(path))
        path.write_bytes(_damaged(path.read_bytes(), seed))
        try:
            read_state_dict(path)   # a flip inside a tensor's values still loads
        except WeightsError as exc:
            assert str(path) in str(exc)


def test_a_csv_that_is_not_text_is_a_data_error(tmp_path):
    from core.csv_input import read_csv
    for name, raw in {"binary": bytes(range(256)) * 4, "empty": b"", "ragged": b"a,b\n1,2,3,4\n\"x"}.items():
        path = tmp_path / f"{name}.csv"
        path.write_bytes(raw)
        try:
            read_csv(path, ("a", "b"), "fix it")
        except DataError as exc:
            assert str(path) in str(exc)


@pytest.mark.parametrize("store", ["not-a-database", "a-folder"])
def test_a_tracking_store_that_cannot_be_opened_is_a_tracking_error(tmp_path, store):
    from results.tracking import TrackingError, check_tracking
    db = tmp_path / "mlflow.db"
    db.mkdir() if store == "a-folder" else db.write_bytes(b"not a database " * 64)
    with pytest.raises(TrackingError, match="is unreachable"):
        check_tracking(f"sqlite:///{db}")
