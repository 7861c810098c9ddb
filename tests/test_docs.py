"""The repository speaks of the project alone: README.md, benchmarks/, docs/ and the code say
what the code does and how to reproduce a figure (its date, machine and command), never how the
work was organised: no working periods or who worked at once, no issue numbers of a tracker a
reader cannot see, no folders of the machine it was built on, no private tool's call syntax."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".md", ".py", ".txt", ".toml", ".yaml", ".cfg", ""}
ORDINAL = r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|earlier|previous|next|later|this"
PHRASES = {
    "a working period": rf"\b({ORDINAL}) session\b|\bin a session\b|\bto the session\b",
    "who worked, and how many at once": r"\bengineers?\b|\bhelpers'|\bsessions at once\b",
    "an issue number of a tracker the reader cannot see": r"\bissues? #?\d+|\bthe issue\b|\(issue:",
    "a folder of the build machine": r"(?<![\w./-])/work\b|/tmp/bench|(?<![\w.-])/root/",
    "a private tool and its call syntax": r"\bdevice tool\b|\bworktree\b|\brun\(command=|\bcarry=\[",
}
PATTERN = re.compile("|".join(f"(?P<p{i}>{p})" for i, p in enumerate(PHRASES.values())), re.IGNORECASE)


def scanned() -> list[Path]:
    places = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "cluster.yaml"]
    for folder in ("benchmarks", "docs", "core", "trainables", "search_spaces", "results", "orchestrator", "tests"):
        places += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in SUFFIXES
                   and "_work" not in p.parts and "__pycache__" not in p.parts]
    return [p for p in places if p.is_file() and p != Path(__file__).resolve()]


def findings(text: str) -> list[tuple[int, str, str]]:
    """(line, what it is, the words) of every phrase about how the work was made."""
    names = list(PHRASES)
    return [(text.count("\n", 0, m.start()) + 1, names[int(m.lastgroup[1:])], m.group(0))
            for m in PATTERN.finditer(text)]


def test_no_file_speaks_of_how_the_work_was_made():
    found = [f"{p.relative_to(ROOT)}:{line}: {what}: {words!r}" for p in scanned()
             for line, what, words in findings(p.read_text(errors="replace"))]
    assert not found, "rephrase as the project's own (date, machine, command):\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "Measured in the sixth session on the box", "six engineers ran tests", "the other helpers' tests",
    "(`benchmarks/train.py`, issue 4)", "needs it (issue #4)", "The issue's criterion is not met",
    "a clone in /work/wt25", "`/work`-local scripts", "ran from /tmp/bench/x", "mkdir -p /root/gpu",
    "run it with the device tool", 'run(command="python3 check.py $OUT")', "not a helper's worktree",
])
def test_the_scan_catches_each_kind(text):
    assert findings(text), text


@pytest.mark.parametrize("text", [
    "a session-scoped pytest fixture, made once per session", "other Ray sessions on the machine",
    "Ray issues [#44687](https://github.com/ray-project/ray/issues/44687)", "ray-project/ray#62746",
    "data in ../shared/utkmask", "the workers' own work/ folder", "a test helper module",
])
def test_the_scan_leaves_the_project_words_alone(text):
    assert not findings(text), findings(text)
