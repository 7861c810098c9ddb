"""Every benchmark script runs: its --smoke mode (demo data, tiny settings, a temporary folder),
as a user would start it, so a refactor cannot silently break one (their figures live in
benchmarks/README.md). A new script under benchmarks/ is picked up here and needs a --smoke too."""
from pathlib import Path

import pytest

from conftest import benchmark_smoke

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
ELSEWHERE = {"audit.py": "tests/test_benchmark_audit.py runs its --smoke"}   # not twice per suite
pytestmark = pytest.mark.slow


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
        if script == "quality.py":   # the fixture ran it: check what it measured
            assert 0 <= made["f1"] <= 1 and made["wall_s"] > 0
            return
        args = ["--workspace", made["workspace"], "--data", made["data"]]
    if script == "faults_table.py":
        # the suite's own cluster tests left their records: table them instead of running the
        # fault again (it runs here only when they were not selected)
        record = request.getfixturevalue("faults_record") / "preprocess_node_loss.json"
        args = ["--records", str(record.parent)] if record.is_file() else []
    out = benchmark_smoke(script, *args)
    assert out.strip(), f"{script} --smoke printed nothing"
    if script == "faults_table.py":
        assert "killed at" in out and "(no record" not in out, out
