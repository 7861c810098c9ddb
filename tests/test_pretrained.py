"""Starting weights: the recipe fine-tunes timm's hub weights; offline that stops before Ray with
one message; a local weights file (what an offline cluster uses) trains end to end."""
import time

import pytest
import torch

from orchestrator.cli import main
from results.tracking import download_model, find_runs
from trainables.models import load_model_file
from trainables.pretrained import PretrainedError, check_hub

from conftest import workspace_sharing_crops


@pytest.fixture
def refusing_hub(monkeypatch, tmp_path):
    """The Hugging Face hub at a local address that refuses (nothing listens on port 9) and an
    empty hub cache: what HF_ENDPOINT=http://127.0.0.1:9 HF_HUB_CACHE=EMPTY do when set before
    huggingface_hub is imported. Offline or online, the checks below meet an unreachable hub."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_offline_hub_is_one_fast_error_naming_the_model_and_both_ways_out(refusing_hub):
    t0 = time.time()
    with pytest.raises(PretrainedError) as err:
        check_hub("efficientnet_b3")
    assert time.time() - t0 < 15   # no retries with back-off
    msg = str(err.value)
    assert "'efficientnet_b3'" in msg and "--pretrained FILE" in msg and "--pretrained none" in msg
    assert "127.0.0.1:9" in msg or "Connect" in msg, msg   # why: the refused connection, not a missing file


def test_tune_defaults_to_hub_weights_and_offline_stops_before_ray(refusing_hub, crops_ws, tmp_path, capsys):
    import ray
    data, _ = crops_ws
    ray.shutdown()   # the suite's shared Ray (tests/conftest.py): this test shows tune starts none
    rc = main(["tune", "--head", "age", "--data", str(data), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1
    assert "--pretrained hub" in err and "'efficientnet_b3'" in err
    assert "--pretrained FILE" in err and "--pretrained none" in err
    assert not ray.is_initialized() and not (tmp_path / "ws").exists()   # nothing started, nothing made


def test_tune_with_a_local_weights_file_trains_from_it_end_to_end(crops_ws, tmp_path):
    """--pretrained FILE on the joint model: the trial's logged model still carries the file's
    backbone (a few smoke steps move it little), and the run records where it started."""
    import timm
    data, src = crops_ws
    torch.manual_seed(1)
    donor = timm.create_model("test_efficientnet").state_dict()
    torch.save(donor, tmp_path / "w.pth")
    ws = workspace_sharing_crops(src, tmp_path / "ws").root
    rc = main(["tune", "--head", "all", "--smoke-test", "--phase", "search", "--num-samples", "1",
               "--pretrained", str(tmp_path / "w.pth"), "--data", str(data), "--workspace", str(ws)])
    assert rc == 0
    uri = f"sqlite:///{ws.resolve()}/mlflow.db"
    [run] = [r for _, r in find_runs(uri, head="all", phase="search").iterrows()]
    staged = run["params.pretrained"]   # the copy in the workspace that every trial reads
    assert staged.startswith(f"{ws.resolve()}/weights/") and staged.endswith("-w.pth")
    model, cfg = load_model_file(download_model(uri, run["run_id"], tmp_path / "dl"))
    w = model.state_dict()["conv_stem.weight"].flatten()
    cos = torch.nn.functional.cosine_similarity(w, donor["conv_stem.weight"].flatten(), dim=0)
    assert cfg.pretrained == staged and cos > 0.9   # a fresh init would be ~0


def test_a_weights_file_of_another_architecture_stops_tune_before_ray(crops_ws, tmp_path, capsys):
    import ray
    import timm
    data, _ = crops_ws
    ray.shutdown()   # the suite's shared Ray: this test shows tune starts none
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "resnet.pth")
    rc = main(["tune", "--head", "mask", "--smoke-test", "--pretrained", str(tmp_path / "resnet.pth"),
               "--data", str(data), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert rc == 2 and "another architecture" in err and "'test_efficientnet'" in err
    assert not ray.is_initialized() and not (tmp_path / "ws").exists()


def test_a_backbone_search_fine_tunes_the_packaged_weights_beside_a_scratch_model(crops_ws, tmp_path):
    """`tune --search-backbones`: Optuna picks the backbone per trial (the recipe's point the first);
    the pretrained trial's logged model still carries the package's ImageNet backbone."""
    from trainables.weights import SOURCES, read_state_dict, source_file
    data, src = crops_ws
    ws = workspace_sharing_crops(src, tmp_path / "ws").root
    rc = main(["tune", "--head", "all", "--smoke-test", "--phase", "search", "--num-samples", "2",
               "--search-backbones", "lite0-64,resnet10t-64", "--data", str(data), "--workspace", str(ws)])
    assert rc == 0
    uri = f"sqlite:///{ws.resolve()}/mlflow.db"
    runs = find_runs(uri, head="all", phase="search").set_index("params.model")
    assert set(runs.index) == {"tf_efficientnet_lite0", "resnet10t"}   # the space's constants reach the trials
    lite = runs.loc["tf_efficientnet_lite0"]
    assert (lite["params.pretrained"], lite["params.img_size"]) == ("lite0", "64")
    model, cfg = load_model_file(download_model(uri, lite["run_id"], tmp_path / "dl"))
    stem = read_state_dict(source_file(SOURCES["lite0"]))["_conv_stem.weight"].flatten()
    cos = torch.nn.functional.cosine_similarity(model.state_dict()["conv_stem.weight"].flatten(), stem, dim=0)
    assert cfg.pretrained == "lite0" and cos > 0.9
