import time

import pytest

from orchestrator.budget import Clock, parse_duration, share_out


@pytest.mark.parametrize("text,seconds", [("23m", 1380), ("1h30m", 5400), ("90s", 90), ("90", 90),
                                          ("1.5m", 90), (45, 45), ("2h", 7200), ("1m 30s", 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["23 minutes", "m", "", "5x", "-3m"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError, match="like 23m"):
        parse_duration(bad)


def test_clock():
    c = Clock(10.0, started=time.time() - 4)
    assert 5.5 < c.left() < 6.5 and c.deadline(2) == pytest.approx(c.started + 8)
    assert Clock().left() == float("inf") and Clock().deadline() is None


def test_share_out_adds_up_and_favours_age():
    shares = share_out(1000, ("mask", "gender", "age"))
    assert sum(s.total_s for s in shares.values()) == pytest.approx(1000)
    assert shares["age"].total_s > shares["mask"].total_s
    only = share_out(100, ("gender",))
    assert only["gender"].total_s == pytest.approx(100)
