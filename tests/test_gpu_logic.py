"""GPU decisions that need no card: the precision by compute capability, the fp16 GradScaler
path (run on the CPU), how a trial's CPUs feed its DataLoader, what an autoscaling cluster can
become, and augmentation that does not depend on the DataLoader's worker count."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import own_ray

from orchestrator.infra.ray_session import cpus_per_gpu, node_types_capacity
from trainables.data import SeededShuffle, loader_workers
from trainables.loop import grad_scaler, memory_fraction, precision_for, train_one_epoch


@pytest.mark.parametrize("capability, expected", [((6, 0), "fp16"), ((7, 0), "fp16"), ((7, 5), "fp16"),
                                                  ((8, 0), "bf16"), ((8, 6), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_a_gpu_is_bf16_only_from_compute_capability_8(capability, expected):
    """P100 / V100 / T4 emulate bf16 (torch.cuda.is_bf16_supported() says yes): fp16 there."""
    assert precision_for("cuda", "auto", capability) == expected


def test_an_asked_precision_wins_and_the_cpu_uses_bf16_only_where_native():
    assert precision_for("cuda", "fp32", (9, 0)) == "fp32" and precision_for("cuda", "bf16", (7, 0)) == "bf16"
    assert precision_for("cpu", "auto", None, cpu_bf16=False) == "fp32"
    assert precision_for("cpu", "auto", None, cpu_bf16=True) == "bf16"


def test_fp16_trains_through_a_grad_scaler_and_the_loss_is_read_once():
    """--precision fp16 on the CPU: autocast in fp16, a live GradScaler that scales the loss,
    and a finite mean loss; fp32 gets a disabled scaler."""
    assert grad_scaler(torch.device("cpu"), "fp16").is_enabled()
    assert not grad_scaler(torch.device("cpu"), "fp32").is_enabled()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    loader = [(x[i:i + 4], y[i:i + 4], None) for i in range(0, 16, 4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[1].weight.detach().clone()
    losses = [train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), opt, None, torch.device("cpu"),
                              precision="fp16") for _ in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not torch.equal(before, model[1].weight)


def test_loader_workers_come_from_the_trials_cpus():
    assert [loader_workers(-1, c) for c in (1, 2, 4, 4.5)] == [0, 1, 3, 3]
    assert loader_workers(2, 8) == 2 and loader_workers(0, 8) == 0


def test_an_autoscaling_clusters_capacity_counts_its_node_types_at_max_workers():
    """cluster.yaml's shape: a head of CPU 0 and GPU workers from 0 hold nothing at start, but can
    grow to 4 workers of 4 CPUs and 1 GPU (capped by the cluster's max_workers)."""
    from pathlib import Path

    import yaml
    config = yaml.safe_load((Path(__file__).parents[1] / "cluster.yaml").read_text())
    assert node_types_capacity(config) == {"CPU": 16, "GPU": 4}
    assert node_types_capacity(config | {"max_workers": 2}) == {"CPU": 8, "GPU": 2}
    assert cpus_per_gpu(config, []) == 4.0
    assert cpus_per_gpu(None, [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}]) == 4.0
    assert cpus_per_gpu(None, [{"Alive": True, "Resources": {"CPU": 2.0}}]) == 0.0


def test_the_shuffle_hands_out_the_same_rows_and_seeds_for_the_same_epoch_seed():
    """Each sample's augmentation seed comes with its row, from the loader's generator, so no
    DataLoader worker keeps a random stream of its own."""
    g = torch.Generator()
    first = list(SeededShuffle(10, g.manual_seed(5)))
    again = list(SeededShuffle(10, g.manual_seed(5)))
    assert first == again and sorted(r for r, _ in first) == list(range(10))
    assert len({s for _, s in first}) == 10


def test_a_trials_batches_do_not_depend_on_its_dataloader_worker_count():
    """`reproduce` retrains without workers: the augmented batches must be those a trial with
    DataLoader workers saw (each worker holds its own copy of the transform)."""
    from trainables.config import TrialConfig
    from trainables.data import HeadData, build_loaders
    rng = np.random.default_rng(0)
    n = 24
    data = HeadData(np.arange(n).astype(str), rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
                    np.zeros(n, int), np.zeros(n, int), np.repeat([0, 1], n // 2))
    cfg = TrialConfig(head="mask", img_size=32, batch_size=4, fold=1, folds=2, strength=2.0)

    def batches(workers: int) -> list:
        train, _ = build_loaders(replace(cfg, num_workers=workers), data, (0.5,) * 3, (0.2,) * 3)
        train.generator.manual_seed(cfg.seed + 1)
        return [x for x, _, _ in train]

    alone, with_workers = batches(0), batches(2)
    assert len(alone) == len(with_workers) == 3
    assert all(torch.equal(a, b) for a, b in zip(alone, with_workers))


def test_the_speed_probe_times_the_trials_epoch_code_and_measures_prediction(monkeypatch):
    """The probe trains through train_one_epoch (what a trial runs) and times prediction with
    TTA itself, instead of a fixed share of a training step."""
    import trainables.loop as loop
    import trainables.speed as speed
    from search_spaces import SMOKE, recipe_config
    seen = []
    real = loop.train_one_epoch
    monkeypatch.setattr(speed, "train_one_epoch", lambda *a, **k: seen.append(k["precision"]) or real(*a, **k))
    cfg = recipe_config("mask", **(dict(SMOKE) | {"precision": "fp32", "batch_size": 4}))
    assert speed.train_images_per_s(cfg, batches=2, warmup=1, threads=1) > 0
    assert seen == ["fp32", "fp32"]   # warm-up epoch, timed epoch
    assert speed.predict_images_per_s(cfg, batches=2) > 0


def test_preprocessing_leaves_no_process_on_the_gpu_and_fallback_crops_reserve_none(tmp_path, monkeypatch):
    """On a Ray with logical GPUs: every GPU task's worker process has exited once its batch is
    done (an idle one would keep its CUDA context and MTCNN on the card after preprocessing),
    and a real preprocess asks a GPU share for detection only, none for the CPU fallback crops."""
    import os
    import time as clock

    import orchestrator.stages.preprocess as pre
    from core.demo_data import DemoSpec, write_demo_data
    from core.faces import CropSettings
    from core.workspace import Workspace
    def pid_of(batch, *args):   # a task that says which process ran it (local: shipped by value)
        return [{"path": it["path"], "pid": os.getpid()} for it in batch]

    with own_ray(num_gpus=1):   # logical GPUs: a Ray of this test's own shape
        batches = [[{"path": f"{b}-{i}", "src_mtime": 0} for i in range(2)] for b in range(4)]
        recs = list(pre._run_tasks(pid_of, batches, (), {"num_cpus": 1, "num_gpus": 0.5}, 2, "detect", False))
        pids = {r["pid"] for r in recs}
        assert len(recs) == 8 and len(pids) == 4   # a process per GPU batch
        for _ in range(300):   # an exit is asynchronous: wait for it, do not time it
            if not any(os.path.exists(f"/proc/{p}") for p in pids):
                break
            clock.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{p}") for p in pids), pids
        asked = []
        real = pre._run_tasks
        monkeypatch.setattr(pre, "_run_tasks", lambda fn, *a: asked.append((fn.__name__, a[2])) or real(fn, *a))
        data = write_demo_data(tmp_path / "data", DemoSpec(train_persons=2, eval_persons=1))
        pre.preprocess(data, Workspace(tmp_path / "ws").make(), CropSettings(size=64), num_gpus_per_worker=0.5,
                       progress=False, batch_size=7)
        assert dict(asked) == {"detect_batch": {"num_cpus": 1, "num_gpus": 0.5}, "crop_batch": {"num_cpus": 1}}


def test_trials_ask_for_deterministic_kernels_and_tag_the_precision_they_used(monkeypatch):
    """What `reproduce` needs of a GPU trial: cuDNN without autotuning, deterministic algorithms,
    cuBLAS's fixed workspace, and the precision actually computed in among the trial's tags."""
    import os

    from trainables.loop import deterministic, placement
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        deterministic(torch.device("cpu"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = was[:2]
        torch.use_deterministic_algorithms(was[2], warn_only=was[3])
    tags = placement(torch.device("cpu"), "fp32")
    assert tags["device"] == "cpu" and tags["precision"] == "fp32"
    assert placement(torch.device("cpu"), "auto")["precision"] in ("bf16", "fp32")


def test_a_trial_sharing_a_card_is_capped_at_its_share_of_the_memory():
    assert memory_fraction(0.5) == 0.5 and memory_fraction(0.25) == 0.25
    assert memory_fraction(1.0) is None and memory_fraction(0.0) is None and memory_fraction(2.0) is None
