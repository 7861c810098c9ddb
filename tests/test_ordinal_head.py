"""The cumulative-logit age head (trainables/ordinal_head.py, `--age-head ordinal`): what it
outputs, that it trains, that it is pinned and saved with the study's models."""
import pytest
import timm
import torch
import torch.nn.functional as F

from core.labels import BACKBONES, output_slices
from orchestrator.options import RunOptions
from trainables.config import TrialConfig
from trainables.models import build_model, load_model_file, save_model_file
from trainables.ordinal_head import OrdinalClassifier, with_ordinal_head
from trainables.weights import SOURCES, read_state_dict, source_file

AGE = output_slices("all")["age"]


def test_its_outputs_are_log_probabilities_that_a_softmax_gives_back():
    torch.manual_seed(0)
    head = OrdinalClassifier(16, 8, AGE)
    x = torch.randn(32, 16) * 4
    out = head(x)
    assert out.shape == (32, 8) and head.linear.out_features == 6   # one score for age's three groups
    age = out[:, AGE]
    assert torch.allclose(age.exp().sum(1), torch.ones(32), atol=1e-5)
    assert torch.allclose(F.softmax(age, 1), age.exp(), atol=1e-5)   # every reader takes a softmax of a head
    # the other heads' columns are the linear layer's logits, untouched
    z = head.linear(x)
    assert torch.equal(out[:, :AGE.start], z[:, :AGE.start])


def test_the_groups_are_ordered_along_one_score():
    """A higher score moves probability from the young group to the old one, never back: P(>= 60)
    rises and P(< 30) falls monotonically, whatever the cut points learned."""
    head = OrdinalClassifier(1, 3, slice(0, 3))
    with torch.no_grad():
        head.linear.weight.fill_(1.0)
        head.linear.bias.zero_()
        head.cuts.copy_(torch.tensor([-1.3, -2.0]))   # a gap parameter below 0 still gives increasing cuts
        assert head.cut_points()[1] > head.cut_points()[0]
        head.cuts.copy_(torch.tensor([-1.3, 1.5]))
    p = head(torch.linspace(-8, 8, 200)[:, None]).exp().detach()
    assert (p[1:, 2] - p[:-1, 2] >= -1e-6).all() and (p[1:, 0] - p[:-1, 0] <= 1e-6).all()
    assert p[0, 0] > 0.99 and p[-1, 2] > 0.99 and p[:, 1].max() > 0.3   # each group wins somewhere


def test_a_face_scored_far_from_its_group_still_pulls_as_a_softmax_heads_would():
    """The loss of a face scored 40 above its group's cut grows with the score and keeps its
    gradient (a difference of sigmoids would round to 0 there and give none)."""
    head = OrdinalClassifier(1, 3, slice(0, 3))
    for group, score in ((0, 40.0), (1, 40.0), (2, -40.0), (1, -40.0)):
        s = torch.tensor([[score]], requires_grad=True)
        loss = F.nll_loss(head.log_probs(s), torch.tensor([group]))
        loss.backward()
        assert torch.isfinite(loss) and loss > 35 and abs(s.grad.item()) > 0.9, (group, score)
    wide = head.log_probs(torch.linspace(-60, 60, 121)[:, None])
    assert torch.isfinite(wide).all() and torch.allclose(wide.exp().sum(1), torch.ones(121), atol=1e-5)


def test_at_a_fine_tuning_rate_it_fits_an_ordered_problem_no_slower_than_a_softmax_head():
    """Ages along one hidden direction of 64 features, three groups (35% / 50% / 15%), Adam at
    3e-4 as the pretrained default fine-tunes, 400 steps of 64: the ordinal head predicts every
    group and reaches a lower loss than a softmax head given the same steps. (Seen: cut points 1
    apart, in plain units, let the middle group never win and the old one never appear.)"""
    torch.manual_seed(0)
    x = torch.randn(2000, 64)
    age = x[:, :8] @ torch.randn(8)
    y = torch.bucketize(age, torch.quantile(age, torch.tensor([0.35, 0.85])))

    def fit(model):
        torch.manual_seed(1)
        opt = torch.optim.Adam(model.parameters(), lr=3e-4)
        for _ in range(400):
            idx = torch.randint(0, len(x), (64,))
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item(), torch.bincount(model(x).argmax(1), minlength=3)
    torch.manual_seed(2)
    ordinal, softmax = fit(OrdinalClassifier(64, 3, slice(0, 3))), fit(torch.nn.Linear(64, 3))
    assert ordinal[0] < softmax[0], (ordinal, softmax)
    assert (ordinal[1] > 0.01 * len(x)).all(), ordinal   # every group predicted, the 15% one too


def test_a_joint_model_with_it_saves_and_loads_and_keeps_the_pretrained_backbone(tmp_path):
    bb = BACKBONES["lite0-96"]
    cfg = TrialConfig(head="all", model=bb.model, pretrained=bb.pretrained, img_size=64, age_head="ordinal")
    model = build_model(cfg).eval()
    assert isinstance(model.get_classifier(), OrdinalClassifier)
    stem = read_state_dict(source_file(SOURCES[bb.pretrained]))["_conv_stem.weight"]
    assert torch.equal(model.state_dict()["conv_stem.weight"], stem)
    x = torch.randn(3, 3, 64, 64)
    loaded, cfg2 = load_model_file(save_model_file(tmp_path / "m.pt", model, cfg))
    assert cfg2.age_head == "ordinal" and torch.allclose(loaded(x), model(x), atol=1e-5)
    # a softmax model's file (written before the field existed: no age_head key) loads as softmax
    plain = TrialConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "age_head"})
    assert plain.age_head == "softmax" and type(build_model(plain).get_classifier()).__name__ == "Linear"


def test_only_a_target_with_age_takes_it_and_a_bad_name_is_refused():
    assert isinstance(build_model(TrialConfig(head="age", model="test_vit", img_size=32, age_head="ordinal"))
                      .get_classifier(), OrdinalClassifier)   # a classifier named "head", not "classifier"/"fc"
    with pytest.raises(ValueError, match="age head 'ordinal': a gender model has no age output"):
        TrialConfig(head="gender", age_head="ordinal")   # `tune --head gender --age-head ordinal`
    with pytest.raises(ValueError, match="unknown age head 'cumulative'; valid age heads: softmax, ordinal"):
        TrialConfig(head="age", age_head="cumulative")
    # run: the joint model takes it, a head's own model beside it without age does not (nor is it pinned)
    o = RunOptions(age_head="ordinal", head_backbone=("gender=resnet10t-64",))
    assert [o.age_head_of(t) for t in o.targets] == ["ordinal", "softmax"]
    with pytest.raises(ValueError, match="--age-head ordinal: --per-head --heads mask,gender trains no age head"):
        RunOptions(joint=False, heads=("mask", "gender"), age_head="ordinal")
    with pytest.raises(ValueError, match="unknown age head 'x'"):
        RunOptions(age_head="x")
    # run's default (RUN_AGE_HEAD) for a target with age; a per-head run without age is not refused for it
    assert [RunOptions().age_head_of(t) for t in ("all", "age", "gender")] == ["ordinal", "ordinal", "softmax"]
    assert RunOptions(age_head="softmax").age_head_of("all") == "softmax"
    assert RunOptions(joint=False, heads=("mask",)).targets == ("mask",)


def test_a_model_without_a_linear_classifier_is_refused_naming_the_way_out():
    with pytest.raises(ValueError, match="replaces a linear classifier.*--age-head softmax"):
        with_ordinal_head(timm.create_model("test_resnet", num_classes=0), AGE)
