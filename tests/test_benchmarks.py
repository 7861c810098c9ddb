"""Every benchmark script runs: its --smoke mode (demo data, tiny settings, a temporary folder),
as a user would start it, so a refactor cannot silently break one (their figures live in
benchmarks/README.md). A new script under benchmarks/ is picked up here and needs a --smoke too."""
import re
from pathlib import Path

import pytest

from conftest import benchmark_smoke
from results.scoring import score_submission

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if "__main__" in p.read_text())
ELSEWHERE = {"audit.py": "tests/test_benchmark_audit.py runs its --smoke",   # not twice per suite
             # its --smoke is a nested pytest of tests the suite runs anyway; its table of the
             # records those tests leave (--records) is tests/test_bad_input_table.py's
             "bad_input_table.py": "tests/test_bad_input_table.py tables real records with it"}


# what each smoke must print: its figure's line or table, with numbers in it (read off its print calls)
PRINTS = {
    "ablation.py": r"\| variant \| 18-class macro F1 .*\n\|---(.|\n)*\| \d\.\d{4} \| \d\.\d{4} \|",
    "age_headroom.py": r"age sigma \(years\) \| age F1(.|\n)*\n\s*\d+ \| \d\.\d{3} \| \d\.\d{3} \| \d\.\d{3}",
    "calibration_stability.py": r"new rule \(\d+ partitions, share 0/0\.5/1\): held-out gain [+-]\d\.\d{4}",
    "calibration_transfer.py": r"\|---(.|\n)*\n\[\{",
    "cli_help.py": r"\| `tune --help` \| \d+(\.\d+)? \| \w+",
    "ensemble_calibration.py": r"macro F1 before \d\.\d{4}, after \d\.\d{4}",
    "faults_table.py": r"killed at",
    "freeze_speed.py": r"freeze 0: \d+\.\d images/s, 1\.00x \(frozen: nothing\)\nfreeze 2: \d+\.\d images/s, \d\.\d\dx "
                       r"\(frozen: conv_stem, blocks\.0\)",
    "head_mix.py": r"\| mask from \| gender from \| age from(.|\n)*\| a \| b \| a \| 1\.0000 \|",
    "preprocess.py": r"preprocess, warm +\d+\.\d images/s wall, +\d+\.\d CPU ms/image(.|\n)*CPU-time ratio .*: \d+\.\dx",
    "train.py": r"trial \d+\.\d img/s, in-memory limit \d+\.\d img/s, ratio \d\.\d{3}",
    "weights_layout.py": r"\|---(.|\n)*\| \d",
}


def run_report_and_models(ws: Path) -> tuple:
    """A workspace's ensemble report and its logged ensemble runs (what `promote` chooses among)."""
    from results.tracking import find_runs
    report = (ws / "results" / "ensemble" / "report.md").read_text()
    runs = find_runs(f"sqlite:///{ws.resolve()}/mlflow.db", role="ensemble")
    return report, sorted(runs["run_id"])


def test_every_smoke_has_its_expected_output():
    assert set(PRINTS) | set(ELSEWHERE) | {"quality.py"} == set(SCRIPTS), "say what a new script's smoke prints"


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_mode_runs(script, request):
    assert "--smoke" in (ROOT / "benchmarks" / script).read_text(), f"give benchmarks/{script} a --smoke mode"
    if script in ELSEWHERE:
        pytest.skip(ELSEWHERE[script])
    args = []
    if script in ("quality.py", "ablation.py", "calibration_transfer.py"):
        # quality.py --smoke ran once for the suite (conftest's budget_run); ablation.py and
        # calibration_transfer.py reuse its finished workspace (a `run` of their own would cost
        # the suite another minute)
        made = request.getfixturevalue("budget_run")
        if script == "quality.py":   # the fixture ran it: its F1 is the submission's, scored again here
            scored = score_submission(Path(made["workspace"]) / "results" / "submission.csv",
                                      Path(made["data"]) / "eval" / "answers.csv")
            assert made["f1"] == round(scored["f1"], 4) and 0 < made["wall_s"] <= 1.1 * made["budget_s"]
            return
        args = ["--workspace", made["workspace"], "--data", made["data"]]
    if script == "faults_table.py":
        # the suite's own cluster tests left their records: table them instead of running the
        # fault again (it runs here only when they were not selected)
        record = request.getfixturevalue("faults_record") / "preprocess_node_loss.json"
        args = ["--records", str(record.parent)] if record.is_file() else []
    run_outputs = run_report_and_models(Path(args[1])) if script == "ablation.py" else None
    out = benchmark_smoke(script, *args)
    assert re.search(PRINTS[script], out), f"{script} --smoke did not print its figure:\n{out[-3000:]}"
    if script == "ablation.py":   # its rows are scored, not recorded: the run's report and models stay the run's
        assert run_report_and_models(Path(args[1])) == run_outputs
    if script == "faults_table.py":
        assert "(no record" not in out, out
