"""The packages import downward only, nothing imports in a circle, and an import inside a
function says why it is there (README 'Layout'). Every import statement counts, function-local
ones too: a cycle hidden in a function is still a cycle."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> layer; a package may import its own layer's packages and those below, never above
LAYERS = {"core": 0, "trainables": 1, "search_spaces": 1, "results": 1, "serving": 2, "orchestrator": 3}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            out[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    return out


MODULES = modules()


def _targets(node: ast.AST, here: str, is_init: bool) -> list[str]:
    """The project modules an import statement names (``from x import y``: x, and x.y if a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = here.split(".")
        if node.level:
            base = base[: len(base) - node.level + (1 if is_init else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    return [n for n in names if n in MODULES and n != here]


def imports() -> list[tuple[str, str, int, bool]]:
    """(module, imported project module, line, inside a function)."""
    found = []
    for mod, f in MODULES.items():
        tree = ast.parse(f.read_text())
        local = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found += [(mod, t, node.lineno, id(node) in local) for t in _targets(node, mod, f.name == "__init__.py")]
    return found


IMPORTS = imports()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, seen, stack = [], set(), []

    def visit(v):
        seen.add(v)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w in stack:
                found.append(stack[stack.index(w):] + [w])
            elif w not in seen:
                visit(w)
        stack.pop()
    for v in sorted(graph):
        if v not in seen:
            visit(v)
    return found


def test_every_package_has_a_layer():
    pkgs = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert pkgs == set(LAYERS), f"give {pkgs ^ set(LAYERS)} a layer in LAYERS and README 'Layout'"


def test_no_package_imports_a_package_above_it():
    up = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}" for m, t, line, _ in IMPORTS
          if LAYERS[t.split(".")[0]] > LAYERS[m.split(".")[0]]]
    assert not up, "upward imports:\n" + "\n".join(up)


@pytest.mark.parametrize("level", ["package", "module"])
def test_no_import_cycle(level):
    graph: dict[str, set[str]] = {}
    for m, t, _, _ in IMPORTS:
        a, b = (m.split(".")[0], t.split(".")[0]) if level == "package" else (m, t)
        if a != b:
            graph.setdefault(a, set()).add(b)
    assert not _cycles(graph), "\n".join(" -> ".join(c) for c in _cycles(graph))


# orchestrator's rooms (README 'Layout'): support below the option declarations, the stages above
# them, the CLI on top; a room imports only its own level and the levels below
ROOMS = {"orchestrator.infra": 0, "orchestrator.chain": 1, "orchestrator.study": 1, "orchestrator.options": 2,
         "orchestrator.stages": 3, "orchestrator.cli": 4, "orchestrator.__main__": 5}


def _room(module: str) -> str:
    rooms = [r for r in ROOMS if module == r or module.startswith(r + ".")]
    assert rooms, f"{module}: give it a room in ROOMS and README 'Layout'"
    return rooms[0]


def test_orchestrator_rooms_import_downward():
    up = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}" for m, t, line, _ in IMPORTS
          if m.startswith("orchestrator.") and t.startswith("orchestrator.")
          and ROOMS[_room(t)] > ROOMS[_room(m)]]
    assert not up, "upward imports between orchestrator's rooms:\n" + "\n".join(up)


def test_every_orchestrator_module_has_a_room():
    assert [_room(m) for m in MODULES if m.startswith("orchestrator.")]


def test_function_local_imports_say_why():
    """Only optional or heavy imports belong inside a function, with a comment on the line
    (or the line above) that says which."""
    silent = []
    for m, t, line, local in IMPORTS:
        if local:
            lines = MODULES[m].read_text().splitlines()
            if "#" not in lines[line - 1] and not lines[line - 2].strip().startswith("#"):
                silent.append(f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}")
    assert not silent, "function-local imports without a reason:\n" + "\n".join(sorted(set(silent)))


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The walk itself: a made-up package pair that imports both ways is caught."""
    graph = {"a": {"b"}, "b": {"a"}}
    assert _cycles(graph) == [["a", "b", "a"]]
    node = ast.parse("from ..orchestrator import cli").body[0]
    assert _targets(node, "core.labels", False) == ["orchestrator", "orchestrator.cli"]
