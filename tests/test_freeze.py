"""Frozen pretrained layers (trainables/freeze.py, `--freeze N`): which layers, that they stay as
loaded through training (weights and batch-norm statistics), and the refusals before anything trains."""
import pytest
import timm
import torch

from orchestrator.options import RunOptions
from trainables.config import TrialConfig
from trainables.freeze import freeze, parameter_groups, trainable
from trainables.loop import train_one_epoch
from trainables.models import build_model, load_model_file, save_model_file


def test_freeze_counts_timms_groups_from_the_input_and_never_reaches_the_classifier():
    model = timm.create_model("resnet10t", num_classes=3)
    groups = parameter_groups(model)
    assert groups[0][0].startswith("conv1.") and groups[1][0].startswith("layer1.")
    assert groups[-1] == ["fc.weight", "fc.bias"]
    freeze(model, 2)   # the stem and layer1
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(groups[0] + groups[1])
    assert len(trainable(model)) == sum(map(len, groups[2:]))
    with pytest.raises(ValueError, match=r"--freeze 6: ResNet has 6 parameter groups.*at most 5"):
        freeze(timm.create_model("resnet10t", num_classes=3), len(groups))


def _batches(n: int, size: int = 32):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        y = torch.randint(0, 3, (8,), generator=g)
        yield torch.randn(8, 3, size, size, generator=g), y, y


def test_frozen_layers_keep_their_weights_and_batch_norm_statistics_through_an_epoch():
    torch.manual_seed(0)
    model = freeze(timm.create_model("resnet10t", num_classes=3), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    train_one_epoch(model, _batches(3), torch.nn.CrossEntropyLoss(), opt, None, torch.device("cpu"),
                    precision="fp32")
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert any("running_mean" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen), "a frozen tensor moved"
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    assert not model.layer1[0].bn1.training and model.layer2[0].bn1.training   # eval() only where frozen
    assert model.conv1[0].weight.grad is None   # autograd never reached it: the saving


def test_a_trial_config_builds_its_model_frozen_and_refuses_what_cannot_be():
    cfg = TrialConfig(head="all", model="tf_efficientnet_lite0", pretrained="lite0", img_size=32, freeze=3)
    model = build_model(cfg, pretrained="none")   # frozen whatever the weights loaded (the speed probe's)
    assert not model.conv_stem.weight.requires_grad and not model.blocks[1][0].conv_pw.weight.requires_grad
    assert model.blocks[2][0].conv_pw.weight.requires_grad
    with pytest.raises(ValueError, match="from scratch.*are random: give pretrained weights or --freeze 0"):
        TrialConfig(head="all", model="resnet10t", freeze=1)
    with pytest.raises(ValueError, match="freeze -1"):
        TrialConfig(head="all", model="tf_efficientnet_lite0", pretrained="lite0", freeze=-1)
    with pytest.raises(ValueError, match="--freeze 9: EfficientNet has 9 parameter groups"):
        TrialConfig(head="all", model="tf_efficientnet_lite0", pretrained="lite0", freeze=9)


def test_a_frozen_models_file_loads_as_it_was_saved(tmp_path):
    """The ensemble and the served model read the file without the weights (pretrained is only a name)."""
    cfg = TrialConfig(head="all", model="tf_efficientnet_lite0", pretrained=str(tmp_path / "gone.pt"), img_size=32,
                      freeze=4, age_head="ordinal")
    model = build_model(cfg, pretrained="none").eval()
    loaded, back = load_model_file(save_model_file(tmp_path / "m.pt", model, cfg))
    assert back == cfg
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_run_refuses_freeze_where_a_target_trains_from_scratch_before_anything_starts():
    assert RunOptions(freeze=3).freeze == 3   # run's default backbone is pretrained
    with pytest.raises(ValueError, match="gender trains from scratch.*--freeze 0"):
        RunOptions(freeze=3, head_backbone=("gender=resnet10t-64",))
    with pytest.raises(ValueError, match="from scratch.*--freeze 0"):
        RunOptions(freeze=1, backbone="resnet10t-64")
    with pytest.raises(ValueError, match="--freeze 9: EfficientNet has 9 parameter groups.*at most 8"):
        RunOptions(freeze=9)   # before the run is charged: a trial would find it only after preprocessing
    with pytest.raises(ValueError, match="--freeze -1: give the number"):
        RunOptions(freeze=-1)
    from orchestrator.stages.run import trial_settings
    assert "freeze" not in trial_settings(RunOptions(freeze=1, smoke_test=True), "all")   # its own tiny config
    assert trial_settings(RunOptions(freeze=3), "all")["freeze"] == 3


@pytest.mark.parametrize("flags", [["--freeze", "9"], ["--freeze", "2", "--search-backbones", "lite0-96,resnet10t-64"]])
def test_tune_refuses_what_no_trial_could_train_as_a_usage_error(tmp_path, capsys, flags):
    from orchestrator import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["tune", "--head", "all", "--data", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws"),
                  *flags])
    assert exc.value.code == 2
    assert "--freeze" in capsys.readouterr().err and not (tmp_path / "ws").exists()
