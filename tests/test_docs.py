"""The repository speaks of the project alone: README.md, benchmarks/, docs/ and the code say
what the code does and how to reproduce a figure (its date, machine and command), never how the
work was organised: no working periods or who worked at once, no issue numbers of a tracker a
reader cannot see, no folders of the machine it was built on, no private tool's call syntax."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".md", ".py", ".txt", ".toml", ".yaml", ".cfg", ""}
# The rule as patterns, not as a list of words: this file would otherwise carry what it forbids.
ORDINAL = (r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|\d+(?:st|nd|rd|th)|"
           r"earlier|previous|next|later|this|that|last")
NUMBER = r"two|three|four|five|six|seven|eight|nine|ten|several|\d+"
# -ion nouns a user reads about (a model's version, an EXIF orientation), not periods of work
PRODUCT_ION = r"version|validation|section|revision|iteration|option|function|question|orientation"
# top folders every Linux machine or the product's own cluster has (cluster.yaml mounts /mnt, a
# node's home is /home/ubuntu), plus two placeholders the code's messages use
MACHINE_ROOTS = r"mnt|proc|dev|usr|tmp|home|etc|opt|var|srv|sys|bin|absolute|earlier"
PHRASES = {
    # "the third <period>", "<period> 4": a period of work counted, named by an -ion noun
    "a numbered working period": rf"\b(?:{ORDINAL})\s+(?!(?:{PRODUCT_ION})s?\b)[a-z]+ion\b|"
                                 rf"\b(?!(?:{PRODUCT_ION})\b)[a-z]+ion\s+#?\d+\b",
    # "<number> <people> ...", "<people>' work", "<periods> at once": who worked, how many at once
    "a headcount": rf"\b(?:{NUMBER})\s+(?:other\s+)?[a-z]+(?:eer|per)s\b|\b[a-z]+(?:eer|per)s'|"
                   r"\b[a-z]+ions\s+at\s+once\b",
    "an issue number of a tracker the reader cannot see": r"\bissues? #?\d+|\bthe issue\b|\(issue:",
    # an absolute path under a top folder of the build machine (not a folder every machine has)
    "an absolute path of the build machine": rf"(?<![\w.:/~}}#$…-])/(?!(?:{MACHINE_ROOTS})\b)[a-z][\w-]*(?=[/`])",
    # a call of the build machine's own tools: a shell command line handed over as a keyword
    "a tool's call syntax": r"\b[a-z_]+\(command=",
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


# what each pattern catches, in words of the same shape as what it forbids (not those words)
@pytest.mark.parametrize("text", [
    "Measured in the sixth convention on the box", "a figure from audition 3", "the previous admission's tests",
    "six volunteers ran tests", "four developers at once", "the other shoppers' tests",
    "(`benchmarks/train.py`, issue 4)", "needs it (issue #4)", "The issue's criterion is not met",
    "a clone in /scratch/wt25", "`/build`-local scripts", "mkdir -p /build7/gpu", "ran from /data7/x",
    "partitions at once", 'tool(command="python3 check.py $OUT")',
])
def test_the_scan_catches_each_kind(text):
    assert findings(text), text


@pytest.mark.parametrize("text", [
    "a session-scoped pytest fixture, made once per session", "other Ray sessions on the machine",
    "Ray issues [#44687](https://github.com/ray-project/ray/issues/44687)", "ray-project/ray#62746",
    "the workers' own work/ folder", "a test helper module", "8 workers", "the next version",
    "the last validation", "Python 3.11", "mounted at /mnt/shared", "/proc/self/stat", "/home/ubuntu/app",
    "f\"{ws}/images/\"", "http://127.0.0.1:5000/#/experiments/1", "three trials at once",
])
def test_the_scan_leaves_the_project_words_alone(text):
    assert not findings(text), findings(text)


def test_the_real_face_folder_is_named_once_in_readme_and_where_its_setting_is_declared():
    """The real-face set's folder is a setting ($UTKMASK_DIR); its default beside the repository is
    spelled out in README.md and in the module that declares it, nowhere else."""
    from benchmarks.realfaces import DEFAULT
    default = f"../{DEFAULT.relative_to(ROOT.parent).as_posix()}"
    where = {str(p.relative_to(ROOT)): p.read_text(errors="replace").count(default) for p in scanned()}
    assert where.pop("README.md") == 1 and where.pop("benchmarks/realfaces.py") >= 1
    assert not {p: n for p, n in where.items() if n}, where
