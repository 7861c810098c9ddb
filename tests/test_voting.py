import numpy as np
import pytest
from sklearn.metrics import f1_score

from core.labels import NUM_CLASSES, decode, encode
from results.calibration import CalibrationSpec, fit_offsets
from core.metrics import macro_f1
from results.voting import hard_vote, joint_log_probs, predict_classes, soft_vote, vote, vote_by_key

A = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
B = np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
C = np.array([[0.5, 0.4, 0.1], [0.3, 0.6, 0.1]])


def test_soft_vote_is_the_mean():
    assert np.allclose(soft_vote([A, B]), (A + B) / 2)
    # image 0: mean 0.43 / 0.47 / 0.10 -> class 1 (the hard vote says 0, see below)
    assert soft_vote([A, B, C]).argmax(1).tolist() == [1, 1]


def test_hard_vote_majority_beats_confidence():
    # image 0: votes 0,1,0 -> class 0 though B is the most confident model
    # image 1: votes 1,2,1 -> class 1
    shares = hard_vote([A, B, C])
    assert shares.argmax(1).tolist() == [0, 1]
    assert np.allclose(shares.sum(1), 1)
    assert np.allclose(shares[0], [2 / 3, 1 / 3, 0], atol=1e-3)


def test_hard_vote_tie_goes_to_larger_summed_probability():
    # two models disagree: 0.55 on class 0 vs 0.9 on class 2 -> tie broken for class 2
    p = np.array([[0.55, 0.05, 0.40]])
    q = np.array([[0.05, 0.05, 0.90]])
    assert hard_vote([p, q]).argmax(1).tolist() == [2]
    assert hard_vote([q, p]).argmax(1).tolist() == [2]     # order of models does not matter
    assert soft_vote([p, q]).argmax(1).tolist() == [2]


def test_vote_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown vote 'median'"):
        vote([A], "median")
    with pytest.raises(ValueError, match="at least one"):
        vote([], "soft")
    with pytest.raises(ValueError, match="one shape"):
        vote([A, A[:1]], "soft")


def test_heads_to_18_classes_matches_encode():
    rng = np.random.default_rng(0)
    n = 50
    heads = {"mask": rng.dirichlet(np.ones(3), n), "gender": rng.dirichlet(np.ones(2), n),
             "age": rng.dirichlet(np.ones(3), n)}
    logp = joint_log_probs(heads)
    assert logp.shape == (n, NUM_CLASSES)
    # joint probabilities of one image sum to 1 (independent heads)
    assert np.allclose(np.exp(logp).sum(1), 1, atol=1e-4)
    expected = encode(heads["mask"].argmax(1), heads["gender"].argmax(1), heads["age"].argmax(1))
    assert np.array_equal(predict_classes(logp), expected)
    # one hand-checked entry: class 17 = not_wear/female/>=60
    m, g, a = decode(17)
    assert np.isclose(logp[0, 17], np.log(heads["mask"][0, m] * heads["gender"][0, g] * heads["age"][0, a]))


def test_heads_bad_shapes_are_named():
    good = {"mask": np.full((2, 3), 1 / 3), "gender": np.full((2, 2), .5), "age": np.full((2, 3), 1 / 3)}
    with pytest.raises(ValueError, match="missing age"):
        joint_log_probs({k: v for k, v in good.items() if k != "age"})
    with pytest.raises(ValueError, match="head gender: expected \\[N, 2\\]"):
        joint_log_probs({**good, "gender": np.full((2, 3), 1 / 3)})
    with pytest.raises(ValueError, match="different numbers of images"):
        joint_log_probs({**good, "age": np.full((3, 3), 1 / 3)})


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 18, 500), rng.integers(0, 16, 500)
    assert np.isclose(macro_f1(y, p, 18), f1_score(y, p, average="macro"))


def _skewed_oof(seed=3, n=600):
    """Noisy joint log-probs where the rare classes are under-predicted (as in the recipe)."""
    rng = np.random.default_rng(seed)
    prior = np.ones(NUM_CLASSES)
    prior[[2, 5, 8, 11, 14, 17]] = 0.15   # the >=60 classes are rare
    y = rng.choice(NUM_CLASSES, n, p=prior / prior.sum())
    logits = rng.normal(0, 1.0, (n, NUM_CLASSES)) + np.log(prior)[None, :] * 1.5
    logits[np.arange(n), y] += 1.6
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return logp, y


def test_calibration_never_lowers_f1_and_is_deterministic():
    logp, y = _skewed_oof()
    cal = fit_offsets(logp, y)
    assert cal.f1_before == pytest.approx(macro_f1(y, predict_classes(logp), 18))
    assert cal.f1_after == pytest.approx(macro_f1(y, cal.apply(logp), 18))
    assert cal.f1_after > cal.f1_before            # the rare classes were under-predicted
    assert cal.offsets[[2, 5, 8, 11, 14, 17]].mean() > 0   # so they are nudged up
    again = fit_offsets(logp, y)
    assert np.array_equal(cal.offsets, again.offsets) and cal.f1_after == again.f1_after


@pytest.mark.parametrize("seed", range(5))
def test_calibration_never_lowers_f1_on_many_fits(seed):
    logp, y = _skewed_oof(seed, n=200)
    cal = fit_offsets(logp, y, CalibrationSpec(rounds=2))
    assert cal.f1_after >= cal.f1_before


def test_calibration_keeps_zero_offsets_when_nothing_helps():
    y = np.arange(18).repeat(3)
    logp = np.log(np.full((len(y), 18), 0.01))
    logp[np.arange(len(y)), y] = np.log(0.83)        # already perfect
    cal = fit_offsets(logp, y)
    assert cal.f1_before == cal.f1_after == 1.0
    assert not cal.offsets.any()


def test_calibration_rejects_mismatched_input():
    with pytest.raises(ValueError, match="matching"):
        fit_offsets(np.zeros((3, 18)), np.zeros(2, dtype=int))


@pytest.mark.parametrize("how", ["soft", "hard"])
def test_vote_by_key_equals_vote_per_image(how):
    # image "x" seen by models A,B,C (rows 0 of each), image "y" by A and B only
    keys = np.array(["x", "y", "x", "y", "x"])
    probs = np.stack([A[0], A[1], B[0], B[1], C[0]])
    uniq, voted = vote_by_key(keys, probs, how)
    assert uniq.tolist() == ["x", "y"]
    assert np.allclose(voted[0], vote([A[:1], B[:1], C[:1]], how)[0])
    assert np.allclose(voted[1], vote([A[1:], B[1:]], how)[0])


def test_heldout_f1_is_honest_about_overfitting():
    from results.calibration import heldout_f1
    logp, y = _skewed_oof(4, n=400)
    persons = np.arange(len(y)) // 4
    cal = fit_offsets(logp, y)
    held = heldout_f1(logp, y, persons, k=4)
    assert 0 < held < cal.f1_after                        # fitted-data F1 flatters the offsets
    assert held == heldout_f1(logp, y, persons, k=4)      # deterministic
    assert np.isnan(heldout_f1(logp, y, np.zeros(len(y)), k=4))   # too few persons to split
