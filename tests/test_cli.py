import subprocess
import sys

from orchestrator.cli import main

DESIGN_COMMANDS = ("preprocess", "tune", "retrain", "ensemble", "run", "demo-data", "eda")


def test_help_lists_design_commands():
    out = subprocess.run([sys.executable, "-m", "orchestrator", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in DESIGN_COMMANDS:
        assert cmd in out


def test_demo_data_then_eda_write_plots(tmp_path):
    data, ws = tmp_path / "data", tmp_path / "ws"
    assert main(["demo-data", "--data", str(data), "--persons", "12", "--eval-persons", "2"]) == 0
    assert main(["eda", "--data", str(data), "--workspace", str(ws)]) == 0
    eda = ws / "results" / "eda"
    for png in ("heads.png", "age_hist.png", "classes.png"):
        assert (eda / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    counts = (eda / "class_counts.csv").read_text().splitlines()
    assert len(counts) == 19 and "| class | name | images | share |" in (eda / "eda.md").read_text()


def test_bad_data_is_a_clear_error_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "eda", "--data", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.csv: file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_folds_command(tmp_path, demo_dir, capsys):
    assert main(["folds", "--data", str(demo_dir), "--workspace", str(tmp_path), "--folds", "3"]) == 0
    assert (tmp_path / "folds" / "person_k3_seed777.csv").is_file()
