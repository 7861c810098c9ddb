"""Promises of README.md that a reading of the code found broken, each shown on the real path."""
from __future__ import annotations

import pytest
from conftest import workspace_sharing_crops


@pytest.mark.slow
def test_tune_fails_when_every_search_trial_failed_before_logging(ray_local, crops_ws, tmp_path, monkeypatch, capsys):
    """A search whose only trial failed (here before its first epoch: the decoded crops it opens
    are cut short) leaves nothing to pick from: `tune --phase search` must not exit 0."""
    import orchestrator.stages.tune as study
    from orchestrator.cli import main
    from results.tracking import find_runs
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path / "ws")
    prepare = study.prepare

    def prepare_then_cut_the_cache(*a, **kw):
        plan = prepare(*a, **kw)
        for npy in (plan.ws.root / "cache").glob("crops_*.npy"):
            npy.write_bytes(npy.read_bytes()[:100])   # what every trial opens: cut short
        return plan
    monkeypatch.setattr(study, "prepare", prepare_then_cut_the_cache)
    rc = main(["tune", "--head", "gender", "--smoke-test", "--phase", "search", "--num-samples", "1",
               "--max-failures", "0", "--study", "allfail", "--data", str(data), "--workspace", str(ws.root),
               "--log-level", "WARNING"])
    assert find_runs(ws.tracking_uri(), study="allfail").empty   # the trial logged nothing
    assert rc == 1
    err = capsys.readouterr().err
    assert "No search trial finished" in err and "ValueError" in err and "--study NEW_NAME" in err


def test_every_epochs_batches_do_not_depend_on_the_dataloader_worker_count():
    """`reproduce` retrains without DataLoader workers a trial that had some (the trial's CPUs but
    one): every epoch, not only the first, must see the batches the trial saw. A loader with
    persistent workers makes its iterator once, so only its first epoch drew the workers' base
    seed from the generator the shuffle also draws from."""
    from dataclasses import replace

    import numpy as np
    import torch

    from trainables.config import TrialConfig
    from trainables.data import HeadData, build_loaders
    rng = np.random.default_rng(0)
    n = 24
    data = HeadData(np.arange(n).astype(str), rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
                    np.zeros(n, int), np.zeros(n, int), np.repeat([0, 1], n // 2))
    cfg = TrialConfig(head="mask", img_size=32, batch_size=4, fold=1, folds=2, strength=2.0)

    def epochs(workers: int, count: int = 3) -> list:
        train, _ = build_loaders(replace(cfg, num_workers=workers), data, (0.5,) * 3, (0.2,) * 3)
        out = []
        for epoch in range(count):   # as trainables.trainer.run_epoch seeds each epoch
            train.generator.manual_seed(cfg.seed + epoch)
            out.append([x for x, _, _ in train])
        return out

    alone, with_workers = epochs(0), epochs(2)
    for epoch, (a, b) in enumerate(zip(alone, with_workers)):
        assert len(a) == len(b) == 3
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"epoch {epoch} differs"


def test_fp16_loss_scale_carries_over_from_one_epoch_to_the_next():
    """fp16 (older cards, --precision fp16) trains through a GradScaler that starts at 2**16 and
    halves the scale, skipping the step, while the scaled gradients overflow. A scaler made anew
    every epoch skips an epoch's first steps every epoch: here, epochs of 4 batches whose
    gradients need 5 halvings never step at all."""
    import torch

    from trainables.loop import train_one_epoch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x, y = 100 * torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))   # gradients of ~25: 25 * 2**16 > fp16's max
    loader = [(x[i:i + 4], y[i:i + 4], None) for i in range(0, 16, 4)]
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    before = model[1].weight.detach().clone()
    for _ in range(3):
        train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), opt, None, torch.device("cpu"), precision="fp16")
    assert not torch.equal(before, model[1].weight), "no optimizer step in 3 epochs of 4 batches"


@pytest.mark.slow
def test_reproduce_a_cpu_trial_with_dataloader_workers_bit_for_bit(ray_local, crops_ws, tmp_path, capsys):
    """README: a CPU trial reproduces bit for bit, `reproduce` training without DataLoader
    workers. A trial of 2 CPUs loads with 1 worker (its CPUs but one); 3 epochs, so the epochs
    after the first, which a persistent worker's loader shuffles from another generator state, count."""
    from orchestrator.cli import main
    from orchestrator.stages.tune import TuneOptions, tune_head
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path / "ws")
    table = tune_head(data, ws, "gender", TuneOptions(smoke_test=True, study="w", phase="cv", fold="0", num_samples=0,
                                                     cpus_per_trial=2, trial=dict(epochs=3), verbose=0))
    run_id = table["run_id"].iloc[0]
    assert main(["reproduce", run_id, "--data", str(data), "--workspace", str(ws.root)]) == 0
    assert f"run {run_id} reproduced bit for bit" in capsys.readouterr().out


def test_dataloader_workers_deliver_batches_when_the_trials_temp_folder_has_a_long_path(tmp_path, monkeypatch):
    """A trial points tempfile at its scratch folder, WS/tune/EXPERIMENT/TRIAL/scratch, whose
    trial part alone (``train_head_<id>_<n>_batch_size=...,lr=..._<date>``) is often longer than
    a Unix socket path may be (108 bytes). A DataLoader worker hands each batch over through such
    a socket in the temp folder: its bind failed there and the trial waited for ever."""
    import tempfile

    import numpy as np

    from trainables.config import TrialConfig
    from trainables.data import HeadData, build_loaders
    scratch = tmp_path / ("train_head_71d0f47e_1_batch_size=32,class_weights=False,epochs=1,fold=0,"
                          "fold_seed=777,folds=2,head=gender,img_size=32,loss=ce,lr=0_2026-12-06_22-42-36") / "scratch"
    scratch.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))   # as trainables/trainable.py sets it
    rng = np.random.default_rng(0)
    n = 16
    data = HeadData(np.arange(n).astype(str), rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
                    np.zeros(n, int), np.zeros(n, int), np.repeat([0, 1], n // 2))
    cfg = TrialConfig(head="mask", img_size=32, batch_size=4, fold=1, folds=2, num_workers=1)
    train, val = build_loaders(cfg, data, (0.5,) * 3, (0.2,) * 3)
    train.timeout = val.timeout = 60   # a lost batch: an error here, not a hang
    assert len(list(train)) == 2 and len(list(val)) == 2


@pytest.mark.slow
def test_a_driver_with_ray_up_trains_outside_a_trial(ray_local):
    """`reproduce`, the GPU check and the tests train in a process that may have started Ray (a
    driver, not a Ray worker): the trial's CPUs and GPU share read there are those of no trial
    (1 CPU, no GPU), not an error from Ray, which answers them only in its workers."""
    from trainables.data import trial_cpus
    from trainables.loop import ray_gpu_share
    assert trial_cpus() == 1.0 and ray_gpu_share() == 0.0
