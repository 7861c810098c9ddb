"""WS/results/budget.json: what a budget run reserved for its ensemble and audit, and what they took."""
import json
import logging

from core.workspace import Workspace
from orchestrator.chain.budget import Clock, budget_use_line
from orchestrator.options import RunOptions
from orchestrator.stages.run import Sizer, write_budget_use

STEPS = {"ensemble": 55.0, "ray_stop": 1.0, "ensemble_steps": {"prediction": 47.7}}


def budget_sizer(o: RunOptions) -> Sizer:
    """A measured sizer, as Sizer.measure leaves it under a budget (2 slots at 48 images/s)."""
    return Sizer(o, n_train=7000, parallel=2, one_images_per_s=48.19, reserve_s=72.0, n_eval=7000, voters=2)


def test_a_budget_run_writes_its_reserve_and_steps(tmp_path):
    ws = Workspace(tmp_path).make()
    o = RunOptions(budget_s=1380.0)
    write_budget_use(ws, o, budget_sizer(o), Clock(1380.0), STEPS | {"audit": 3.7})
    use = json.loads((ws.results / "budget.json").read_text())
    assert (use["budget_s"], use["reserve_s"], use["models"], use["n_eval"], use["audit"]) == (1380.0, 72.0, 2, 7000, 3.7)
    assert use["ensemble_steps"] == {"prediction": 47.7}


def test_a_skipped_audit_is_no_cost_and_the_log_says_so(tmp_path, caplog):
    ws = Workspace(tmp_path).make()
    o = RunOptions(budget_s=1380.0)
    with caplog.at_level(logging.INFO):
        write_budget_use(ws, o, budget_sizer(o), Clock(1380.0), STEPS | {"audit": None})
    use = json.loads((ws.results / "budget.json").read_text())
    assert use["audit"] is None
    assert "audit skipped of the 72 s reserved" in caplog.text
    assert budget_use_line(use) in caplog.text   # benchmarks/quality.py prints the same line from the file


def test_the_account_in_words_names_every_step():
    use = {"budget_s": 1380.0, "seconds": 1365.3, "reserve_s": 72.0, "ensemble": 55.0, "audit": 3.7,
           "ensemble_steps": {"oof": 2.0, "record": 1.1}}
    assert budget_use_line(use) == ("budget: ensemble 55 s (oof 2, record 1) and audit 4 s of the 72 s reserved; "
                                    "run used 1365 of 1380 s")


def test_fixed_settings_write_no_account_and_remove_an_earlier_ones(tmp_path):
    """--smoke-test (or no budget) reserves nothing: an account would say 0 models and 0 s reserved."""
    ws = Workspace(tmp_path).make()
    (ws.results / "budget.json").write_text("{}")
    o = RunOptions(budget_s=200.0, smoke_test=True)
    write_budget_use(ws, o, Sizer(o, n_train=10, parallel=2), Clock(200.0), STEPS | {"audit": 1.0})
    assert not (ws.results / "budget.json").exists()
