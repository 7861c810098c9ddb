"""GPU scheduling without a GPU: a local Ray with 2 *logical* GPUs (ray.init(num_gpus=2)) shows
what Ray gives each trial, preprocessing worker, prediction task and speed-probe slot; torch
sees no CUDA here, so each of them runs on the CPU. `pytest -k gpu` selects these tests."""
import logging
import threading
import time

import pytest
import torch
from conftest import own_ray, workspace_sharing_crops

from core.demo_data import DemoSpec, write_demo_data
from core.faces import CropSettings
from core.workspace import Workspace
from orchestrator.infra.ray_session import gpu_share
from orchestrator.options import GPU_SHARE as TRIAL_GPU_SHARE
from orchestrator.stages.ensemble import EnsembleOptions, ensemble
from orchestrator.stages.preprocess import preprocess
from orchestrator.stages.run import RunOptions, Sizer, trial_slots
from orchestrator.stages.tune import TuneOptions, tune_head
from results.tracking import find_runs, most_at_once
from search_spaces import SMOKE
from trainables import loop

GPUS, CPUS = 2, 4   # logical: Ray hands them out, nothing computes on them


@pytest.fixture(scope="module")
def gpu_ray(crops_ws):   # crops_ws first: it crops on the shared Ray, which this one replaces
    with own_ray(num_cpus=CPUS, num_gpus=GPUS):
        yield


@pytest.fixture(scope="module")
def gpu_ws(crops_ws, tmp_path_factory):
    """A private workspace (own MLflow store and Tune storage) sharing the session's crops."""
    data, src = crops_ws
    return data, workspace_sharing_crops(src, tmp_path_factory.mktemp("gpu_ws"))


class GpuWatch:
    """The fewest GPUs Ray had free while the block ran (polled every 20 ms): 0.0 means the
    block's trials or tasks held all of them at once."""

    def __enter__(self):
        self.min_free, self._stop = float(GPUS), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        import ray
        while not self._stop.is_set():   # a fully used resource drops out of the dict
            self.min_free = min(self.min_free, ray.available_resources().get("GPU", 0.0))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_gpu_tune_half_a_gpu_per_trial_runs_4_trials_at_once_each_on_its_ray_gpu(gpu_ray, gpu_ws):
    data, ws = gpu_ws
    opts = TuneOptions(smoke_test=True, verbose=0, phase="search", num_samples=4, gpus_per_trial=0.5,
                       cpus_per_trial=1, study="gpu", trial=dict(epochs=2))
    with GpuWatch() as watch:
        tune_head(data, ws, "all", opts)
    runs = find_runs(ws.tracking_uri(), head="all", study="gpu", phase="search")
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all()
    assert watch.min_free == 0.0   # 4 trials x 0.5 held both GPUs at once
    # Ray packs two trials per GPU and tells each which one (CUDA_VISIBLE_DEVICES = its id)
    assert sorted(runs["tags.ray_gpu_ids"]) == ["0", "0", "1", "1"]
    assert (runs["tags.cuda_visible_devices"] == runs["tags.ray_gpu_ids"]).all()
    assert set(runs["tags.device"]) == {"cpu"}   # torch sees no CUDA: the trial trained on the CPU
    assert most_at_once(ws.tracking_uri(), runs["run_id"]) == 4


def test_gpu_ensemble_prediction_tasks_hold_their_gpu_share(gpu_ray, gpu_ws):
    data, ws = gpu_ws
    runs = find_runs(ws.tracking_uri(), head="all", study="gpu", phase="search")
    if runs.empty:
        pytest.skip("needs the models of the tune test above")
    two = tuple(runs["run_id"][:2])   # two joint models: each votes in every head
    opts = EnsembleOptions(runs=two, eval_vote="all", use_ray=True, gpus_per_model=1.0, calibrate=False, submission=ws.root / "sub.csv")
    with GpuWatch() as watch:
        res = ensemble(data, ws, opts)
    assert res.submission.is_file() and set(res.models["run_id"]) == set(two)
    assert watch.min_free < GPUS   # the prediction tasks were scheduled on GPUs


def test_gpu_preprocess_workers_are_handed_gpus_by_default(gpu_ray, tmp_path):
    data = write_demo_data(tmp_path / "data", DemoSpec(train_persons=2, eval_persons=1))
    ws = Workspace(tmp_path / "ws").make()
    with GpuWatch() as watch:   # num_gpus_per_worker=None: a GPU share where the cluster has GPUs
        m = preprocess(data, ws, CropSettings(size=64), num_gpus_per_worker=None, progress=False, batch_size=7)
    assert watch.min_free < GPUS
    where = m.loc[m["error"] == "", "device"]
    assert len(where) == len(m) and where.str.match(r"cpu, Ray GPUs \[[01]\]").all()


def test_gpu_budget_speed_probe_reserves_gpus_as_trials_do(gpu_ray):
    assert trial_slots({"CPU": CPUS, "GPU": GPUS}, 1, 0.5) == 4
    o = RunOptions(budget_s=600, gpus_per_trial=1, cpus_per_trial=2, model=SMOKE["model"], img_size=32,
                   batch_size=4, precision="fp32")
    with GpuWatch() as watch:
        sizer = Sizer.measure(o, n_train=100, n_eval=10)
    assert sizer.parallel == 2 and sizer.one_images_per_s > 0
    assert watch.min_free == 0.0   # 2 probe slots x 1 GPU, held at once as 2 trials would


def test_gpu_run_gives_its_trials_half_a_gpu_where_the_cluster_has_gpus(gpu_ray):
    """run's default is no fixed 0: a trial that reserves no GPU gets CUDA_VISIBLE_DEVICES="" from
    Ray and trains on the CPU beside an idle card."""
    assert RunOptions().gpus_per_trial is None
    assert RunOptions().on_cluster().gpus_per_trial == TRIAL_GPU_SHARE == 0.5
    assert RunOptions(gpus_per_trial=0).on_cluster().gpus_per_trial == 0 and gpu_share(0, TRIAL_GPU_SHARE) == 0
    assert trial_slots({"CPU": CPUS, "GPU": GPUS}, 1, RunOptions().on_cluster().gpus_per_trial) == 4


def test_gpu_absent_torch_runs_on_the_cpu_and_says_so_once(caplog):
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    loop._say_cpu_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="trainables.loop"):
        devices = {loop.device_of() for _ in range(3)}
    assert devices == {torch.device("cpu")}
    assert [r.getMessage() for r in caplog.records] == ["torch sees no CUDA device: running on the CPU"]
