"""results/ordinal.py: the age head read as an ordinal score, cut where the OOF macro F1 is best."""
import numpy as np
import pytest

from core.labels import decode, encode
from core.metrics import macro_f1
from results.ordinal import age_score, fit_cuts, with_age


def joint(mask: np.ndarray, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
    """[N, 18] joint log-probabilities from three heads' probabilities (class = mask*6 + gender*3 + age)."""
    lp = (np.log(mask)[:, :, None, None] + np.log(gender)[:, None, :, None] + np.log(age)[:, None, None, :])
    return lp.reshape(len(mask), 18)


def heads(n: int, age: np.ndarray, rng) -> tuple[np.ndarray, ...]:
    mask = rng.dirichlet(np.ones(3), n)
    gender = rng.dirichlet(np.ones(2), n)
    return mask, gender, age


def test_the_score_is_the_expected_age_group_whatever_mask_and_gender_say():
    rng = np.random.default_rng(0)
    age = rng.dirichlet(np.ones(3), 50)
    lp = joint(*heads(50, age, rng))
    np.testing.assert_allclose(age_score(lp), age @ np.arange(3), atol=1e-9)
    np.testing.assert_allclose(age_score(lp + 7.0), age_score(lp), atol=1e-9)   # unnormalised rows too


def test_with_age_changes_only_the_age_group():
    pred = np.arange(18)
    out = with_age(pred, np.array([0.1, 1.2, 1.9] * 6), (0.5, 1.5))
    m, g, a = decode(out)
    m0, g0, _ = decode(pred)
    assert (m == m0).all() and (g == g0).all()
    assert list(a) == [0, 1, 2] * 6


def test_cuts_find_the_rare_old_class_the_argmax_misses():
    """The head puts the old persons' mass mostly on the middle group: the argmax never says
    >=60, an ordinal cut inside the middle group's range recovers them, and fitting says so."""
    rng = np.random.default_rng(1)
    n = 600
    truth_age = rng.choice(3, n, p=[0.45, 0.45, 0.10])
    lean = {0: [0.8, 0.2, 0.0], 1: [0.15, 0.8, 0.05], 2: [0.05, 0.6, 0.35]}
    age = np.array([rng.dirichlet(np.array(lean[a]) * 30 + 0.5) for a in truth_age])
    mask, gender, _ = heads(n, age, rng)
    y = encode(mask.argmax(1), gender.argmax(1), truth_age)   # mask and gender right: age decides
    lp = joint(mask, gender, age)
    pred = lp.argmax(1)
    fitted = fit_cuts(lp, y, pred)
    assert fitted.f1_before == pytest.approx(macro_f1(y, pred, 18))
    assert fitted.f1_after > fitted.f1_before + 0.02
    lo, hi = fitted.cuts
    assert 0 < lo < hi < 2
    out = fitted.apply(lp, pred)
    assert macro_f1(y, out, 18) == pytest.approx(fitted.f1_after)
    assert (decode(out)[2] == 2).sum() > (decode(pred)[2] == 2).sum()


def test_no_cut_beats_a_perfect_argmax_and_then_nothing_changes():
    rng = np.random.default_rng(2)
    truth_age = rng.choice(3, 300)
    age = np.eye(3)[truth_age] * 0.9 + 0.1 / 3
    mask, gender, _ = heads(300, age, rng)
    lp = joint(mask, gender, age)
    y = lp.argmax(1)
    fitted = fit_cuts(lp, y, y)
    assert fitted.f1_after == fitted.f1_before == 1.0 and np.isnan(fitted.cuts[0])
    assert (fitted.apply(lp, y) == y).all()


def test_cuts_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="matching, non-empty"):
        fit_cuts(np.zeros((3, 18)), np.zeros(2, int), np.zeros(3, int))


def test_the_ordinal_read_is_never_recorded_as_the_logged_model():
    from core.errors import DataError
    from orchestrator.options import EnsembleOptions
    from orchestrator.stages.ensemble import check_options
    with pytest.raises(DataError, match="decodes age by argmax"):
        check_options(EnsembleOptions(age_decode="ordinal"))
    with pytest.raises(DataError, match="use one of argmax, ordinal"):
        check_options(EnsembleOptions(age_decode="median", record=False))
    check_options(EnsembleOptions(age_decode="ordinal", record=False))


def test_the_ordinal_read_without_oof_stops_before_any_prediction():
    from core.errors import DataError
    from orchestrator.options import EnsembleOptions
    from orchestrator.stages.ensemble import check_ordinal
    with pytest.raises(DataError, match="select cv fold runs too"):
        check_ordinal(None, EnsembleOptions(age_decode="ordinal", record=False))
    check_ordinal(None, EnsembleOptions())   # the argmax needs none
