"""The two halves stay apart: ``rl_jax`` (the JAX trainer) never imports ``corecraft`` (the environment), and
``corecraft`` never imports ``jax``, ``flax`` or ``rl_jax``, so the environment runs, and ships, without
the accelerator stack.

Two checks, each over every module of a package:
- import-time: a fresh interpreter imports the modules one by one and watches ``sys.modules``; what is
  loaded transitively (through a third package too) counts, and the failure names the module that pulled it;
- anywhere in the source: an ``ast`` walk finds import statements inside functions too (lazy imports that
  no import-time check sees).
A probe package with one violation of each kind proves the checks can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

BOUNDARIES = {
    "rl_jax": ("corecraft",),
    "corecraft": ("jax", "jaxlib", "flax", "rl_jax"),
}

# Run in a fresh interpreter: argv = [package, search path, forbidden...]; prints one JSON line
# {"pulled": {module: [forbidden top-level packages its import loaded first]}, "errors": {module: error},
#  "visited": [modules imported, in order]}.
_PROBE = r"""
import importlib, json, pkgutil, sys
package, path, forbidden = sys.argv[1], sys.argv[2], set(sys.argv[3:])
sys.path.insert(0, path)

def loaded():
    return {name.split(".")[0] for name in sys.modules} & forbidden

pulled, errors, visited = {}, {}, []
if loaded():  # loaded by start-up hooks (sitecustomize, .pth files): no import could be blamed for it
    errors["<start-up>"] = f"already loaded: {sorted(loaded())}"

def visit(name):
    visited.append(name)
    before = loaded()
    try:
        module = importlib.import_module(name)
    except BaseException as exc:  # SystemExit too: a module must not exit when imported
        errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    new = loaded() - before
    if new:
        pulled[name] = sorted(new)
    return module

root = visit(package)
if root is not None:
    def unwalkable(name):
        errors.setdefault(name, "walk_packages could not import it")
    for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=unwalkable):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # running it is not importing it
            visit(info.name)
print(json.dumps({"pulled": pulled, "errors": errors, "visited": visited}))
"""


def _import_time_violations(package: str, forbidden: tuple[str, ...], path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, package, str(path), *forbidden],
        capture_output=True, text=True, timeout=600, cwd=path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _source_violations(package: str, forbidden: tuple[str, ...], path: Path) -> list[str]:
    found = []
    for file in sorted((path / package).rglob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in forbidden:
                    found.append(f"{file.relative_to(path)}:{node.lineno} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(BOUNDARIES))
def test_importing_every_module_loads_no_forbidden_package(package):
    forbidden = BOUNDARIES[package]
    result = _import_time_violations(package, forbidden, ROOT)
    # the walk reached every module file (subpackages included), not just the package's __init__
    files = {p for p in (ROOT / package).rglob("*.py") if p.name != "__main__.py"}
    assert len(result["visited"]) == len(files), sorted(result["visited"])
    assert result["errors"] == {}, f"modules of {package} that do not import: {result['errors']}"
    assert result["pulled"] == {}, f"{package} modules whose import loads {forbidden}: {result['pulled']}"


@pytest.mark.parametrize("package", sorted(BOUNDARIES))
def test_no_import_statement_names_a_forbidden_package(package):
    assert _source_violations(package, BOUNDARIES[package], ROOT) == []


def test_the_checks_catch_a_violation(tmp_path):
    """A probe package: a clean module, one whose import pulls a forbidden package (through a third,
    allowed one), and one that imports it lazily inside a function."""
    pkg = tmp_path / "probe_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "clean.py").write_text("import json\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "eager.py").write_text("import probe_pkg.sub.middle\n")
    (pkg / "sub" / "middle.py").write_text("import wave\n")  # a stdlib module stands in for jax: cheap
    (pkg / "lazy.py").write_text("def f():\n    from wave import open\n    return open\n")
    (pkg / "__main__.py").write_text("raise SystemExit('never imported')\n")

    result = _import_time_violations("probe_pkg", ("wave",), tmp_path)
    assert result["errors"] == {}
    assert result["visited"] == [
        "probe_pkg", "probe_pkg.clean", "probe_pkg.lazy", "probe_pkg.sub", "probe_pkg.sub.eager",
        "probe_pkg.sub.middle",
    ]
    assert result["pulled"] == {"probe_pkg.sub.eager": ["wave"]}
    assert _source_violations("probe_pkg", ("wave",), tmp_path) == [
        "probe_pkg/lazy.py:2 imports wave",
        "probe_pkg/sub/middle.py:1 imports wave",
    ]


# Within corecraft: the episode layer (definition, trajectory types, the chat client) is what the eval agent,
# the judge and the trainer's environment share; it imports none of them, so they never import one another
# for what they share.
EPISODE_LAYER_FORBIDDEN = ("corecraft.judge", "corecraft.eval", "corecraft.env", "corecraft.server")


def test_the_episode_layer_imports_none_of_its_users():
    found = []
    for file in sorted((ROOT / "corecraft" / "episode").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{file.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if any(n == f or n.startswith(f + ".") for f in EPISODE_LAYER_FORBIDDEN)]
    assert found == []
