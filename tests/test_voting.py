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


def test_one_model_votes_alone_and_a_hard_tie_moves_the_shares_by_a_thousandth():
    """a single model's soft vote is its probabilities, its hard vote (nearly) all on its argmax;
    in a tie the summed probability adds TIE_WEIGHT (1e-3) times its mean to each class's votes."""
    assert np.array_equal(vote([A], "soft"), A)
    assert hard_vote([A]).argmax(1).tolist() == [0, 1] and hard_vote([A])[0, 0] == pytest.approx(1.0006 / 1.001)
    tie = hard_vote([np.array([[0.6, 0.4]]), np.array([[0.3, 0.7]])])
    assert tie[0] == pytest.approx([1.00045 / 2.001, 1.00055 / 2.001], rel=1e-12)


def test_vote_refuses_arrays_that_are_not_n_by_c():
    with pytest.raises(ValueError) as err:
        soft_vote([A, A[:1]])
    assert str(err.value) == "vote needs [N, C] arrays of one shape; got shapes [(1, 3), (2, 3)]"
    with pytest.raises(ValueError, match=r"got shapes \[\(3,\)\]"):
        hard_vote([A[0], B[0]])
    with pytest.raises(ValueError, match=r"unknown vote 'mean'; use one of soft, hard"):
        vote_by_key(np.array(["x"]), A[:1], "mean")


def test_joint_log_probs_floor_zeros_and_cap_at_one():
    """a hard 0 is read as LOG_FLOOR (1e-6), a probability over 1 as 1."""
    heads = {"mask": np.array([[1.0, 0.0, 0.0]]), "gender": np.array([[1.5, 0.0]]), "age": np.array([[1.0, 0.0, 0.0]])}
    logp = joint_log_probs(heads)
    assert logp[0, 0] == 0.0 and logp[0, 17] == pytest.approx(3 * np.log(1e-6))
    assert logp[0, 3] == pytest.approx(np.log(1e-6))   # wear / female / <30: only the gender is 0


def test_joint_log_probs_name_what_is_wrong_whole():
    good = {"mask": np.full((2, 3), 1 / 3), "gender": np.full((2, 2), .5), "age": np.full((2, 3), 1 / 3)}
    for bad, text in (({"mask": good["mask"]}, "joint_log_probs needs every head; missing gender, age"),
                      ({**good, "age": np.full((3, 3), 1 / 3)},
                       "heads predict different numbers of images: {'mask': 2, 'gender': 2, 'age': 3}"),
                      ({**good, "mask": np.full((2, 3, 1), 1 / 3)}, "head mask: expected [N, 3] probabilities, got (2, 3, 1)")):
        with pytest.raises(ValueError) as err:
            joint_log_probs(bad)
        assert str(err.value) == text


def test_offsets_move_the_prediction():
    logp = np.log(np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]))
    assert predict_classes(logp).tolist() == [0, 1]
    assert predict_classes(logp, [0.0, 0.0, 1.0]).tolist() == [2, 2]
    assert predict_classes(logp, np.array([0.0, 0.6, 0.0])).tolist() == [1, 1]


def test_the_default_grid_is_minus_3_to_3_by_tenths():
    from results.calibration import DEFAULT_GRID
    assert DEFAULT_GRID == tuple(round(i / 10, 2) for i in range(-30, 31))


def test_calibration_keeps_the_smallest_nudge_and_argmax_ties():
    """of the offsets that fix the second image (class 0 down by more than 0.5: at exactly 0.5 the
    tie goes to the lower class, as argmax's), the smallest is kept; the next round finds nothing."""
    logp, y = np.array([[0.0, -1.0], [0.0, -0.5]]), np.array([0, 1])
    cal = fit_offsets(logp, y)
    assert cal.offsets.tolist() == [-0.6, 0.0] and (cal.f1_before, cal.f1_after, cal.rounds_run) == (1 / 3, 1.0, 2)
    assert cal.apply(logp).tolist() == [0, 1]
    once = fit_offsets(logp, y, CalibrationSpec(rounds=1))
    assert once.rounds_run == 1 and once.offsets.tolist() == [-0.6, 0.0]
    none = fit_offsets(logp, y, CalibrationSpec(rounds=0))
    assert none.rounds_run == 0 and not none.offsets.any() and none.f1_after == 1 / 3


def test_calibration_refusals_name_both_lengths():
    with pytest.raises(ValueError) as err:
        fit_offsets(np.zeros((3, 18)), np.zeros(2, dtype=int))
    assert str(err.value) == "calibration needs matching, non-empty predictions and labels (3 vs 2)"
    with pytest.raises(ValueError, match=r"\(0 vs 0\)"):
        fit_offsets(np.zeros((0, 18)), np.zeros(0, dtype=int))


def test_the_heldout_check_averages_person_splits_and_each_share_of_the_offsets():
    """one row per split of the persons (seed, seed+1, ...), one column per share; share 0 is the
    uncalibrated F1 on every split; heldout_f1 is the full share of the split by seed."""
    from results.calibration import HeldOutCheck, heldout_check, heldout_f1
    rng = np.random.default_rng(5)   # 4 classes, the last under-predicted: small and quick to fit
    y = rng.integers(0, 4, 80)
    logp = rng.normal(0, 1, (80, 4)) + 1.2 * np.eye(4)[y] - np.array([0, 0, 0, 1.0])
    persons = np.arange(len(y)) // 4
    spec = CalibrationSpec(rounds=1)
    check = heldout_check(logp, y, persons, k=5, spec=spec, seed=11, repeats=2, shrinks=(0.0, 1.0))
    assert check.f1.shape == (2, 2) and check.shrinks == (0.0, 1.0)
    assert check.f1[:, 0].tolist() == [macro_f1(y, predict_classes(logp), 4)] * 2
    assert check.f1[0, 1] == heldout_f1(logp, y, persons, k=5, spec=spec, seed=11)
    assert check.f1[1, 1] == heldout_f1(logp, y, persons, k=5, spec=spec, seed=12) != check.f1[0, 1]
    assert check.at(1.0) == pytest.approx(check.f1[:, 1].mean()) and check.mean.tolist() == check.f1.mean(0).tolist()
    assert heldout_check(logp, y, persons % 4, k=5) is None
    assert heldout_f1(logp, y, persons, spec=spec) == heldout_f1(logp, y, persons, k=5, spec=spec, seed=777)
    assert np.isnan(heldout_f1(logp[:16], y[:16], persons[:16], spec=spec))   # 4 persons, 5 parts
    assert not np.isnan(heldout_f1(logp[:20], y[:20], persons[:20], spec=spec))   # 5 persons: one each
    hc = HeldOutCheck((0.0, 0.5, 1.0), np.array([[0.5, 0.7, 0.7], [0.5, 0.7, 0.7]]))
    assert hc.best_shrink == 0.5 and HeldOutCheck((), np.zeros((1, 0))).best_shrink == 0.0


def test_heldout_f1_with_one_person_per_part_is_leave_one_person_out():
    """k = the number of persons: each person is predicted with the offsets the spec fits on all
    the others (whatever the order the parts are drawn in), and F1 is taken over all predictions together."""
    from results.calibration import heldout_f1
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 24)
    logp = rng.normal(0, 1, (24, 3)) + np.eye(3)[y] - np.array([0, 0, 1.5])   # class 2 under-predicted
    persons = np.arange(24) // 6
    spec = CalibrationSpec(grid=(0.0, 0.5, 1.0, 1.5), rounds=1)
    pred = np.empty_like(y)
    for p in range(4):
        held = persons == p
        pred[held] = predict_classes(logp[held], fit_offsets(logp[~held], y[~held], spec).offsets)
    assert heldout_f1(logp, y, persons, k=4, spec=spec) == macro_f1(y, pred, 3) > macro_f1(y, predict_classes(logp), 3)


def test_an_exact_tie_with_a_lower_class_is_not_a_win():
    """a candidate offset that only ties the lower class (as argmax, the lower index wins) does not
    count: the kept offset is the next one up."""
    cal = fit_offsets(np.array([[0.0, -0.5]]), np.array([1]), CalibrationSpec(grid=(0.0, 0.5, 0.6)))
    assert cal.offsets.tolist() == [0.0, 0.6] and cal.f1_after == 1.0


def test_the_heldout_check_needs_k_persons_by_default_5():
    from results.calibration import heldout_check
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 20)
    logp = rng.normal(0, 1, (20, 3))
    spec = CalibrationSpec(grid=(0.0, 1.0), rounds=1)
    five, four = np.arange(20) // 4, np.arange(20) // 5
    assert heldout_check(logp, y, five, spec=spec, repeats=1, shrinks=(1.0,)).f1.shape == (1, 1)
    assert heldout_check(logp, y, four, spec=spec, repeats=1, shrinks=(1.0,)) is None


def test_the_default_vote_is_soft_in_double_precision():
    keys = np.array(["x", "x"])
    assert np.array_equal(vote([A, B]), soft_vote([A, B])) and vote([A.astype(np.float32)]).dtype == np.float64
    assert np.allclose(vote_by_key(keys, np.stack([A[0], B[0]]))[1], [(A[0] + B[0]) / 2])


def test_vote_refusals_read_whole():
    for call, text in ((lambda: vote([A], "median"), "unknown vote 'median'; use one of soft, hard"),
                       (lambda: vote([]), "vote needs at least one model's probabilities")):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == text


def test_joint_log_probs_of_float32_outputs_are_taken_in_double_precision():
    rng = np.random.default_rng(3)
    heads = {"mask": rng.dirichlet(np.ones(3), 4), "gender": rng.dirichlet(np.ones(2), 4),
             "age": rng.dirichlet(np.ones(3), 4)}
    as32 = {h: p.astype(np.float32) for h, p in heads.items()}
    assert np.array_equal(joint_log_probs(as32), joint_log_probs({h: p.astype(np.float64) for h, p in as32.items()}))
