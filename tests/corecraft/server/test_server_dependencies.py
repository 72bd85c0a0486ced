"""pyproject.toml declares what the environment imports, and the environment imports what it declares.

A package that arrives only as someone else's dependency (pydantic through mcp, say) can change or vanish
when that package's requirements move; what ``corecraft`` imports itself must be declared by us.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# Declared for what they do at run time, not imported: uvicorn loads httptools as its HTTP parser.
RUNTIME_ONLY = {"httptools"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    """The distribution a PEP 508 requirement names ("mcp>=2.3,<3" -> "mcp")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _canonical(match.group(1))


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``try: ... except ImportError``: a speed-up used when present (uvloop), not a requirement."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            return True
    return False


@functools.cache
def _imported_distributions(package: str) -> dict[str, set[str]]:
    """Third-party distributions the package's modules import (unconditionally), with the files that do."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("corecraft", "rl_jax") or _optional(node, parents):
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(_canonical(dist), set()).add(str(path.relative_to(REPO)))
    return found


def _declared() -> tuple[set[str], set[str]]:
    """(every runtime dependency, the environment's block of them: from '# environment' to '# trainer')."""
    text = (REPO / "pyproject.toml").read_text()
    runtime = {_requirement_name(r) for r in tomllib.loads(text)["project"]["dependencies"]}
    block = text[text.index("# environment (corecraft/)") : text.index("# trainer (rl_jax/)")]
    environment = {_requirement_name(r) for r in re.findall(r'^\s*"([^"]+)"', block, re.MULTILINE)}
    return runtime, environment


def test_everything_the_environment_imports_is_declared() -> None:
    runtime, _ = _declared()
    imported = _imported_distributions("corecraft")
    assert {"mcp", "pydantic", "starlette", "uvicorn", "anyio"} <= set(imported)  # the scan sees the server
    undeclared = {dist: sorted(files)[:3] for dist, files in imported.items() if dist not in runtime}
    assert undeclared == {}, f"imported by corecraft but not in [project] dependencies: {undeclared}"


def test_every_environment_dependency_is_used() -> None:
    _, environment = _declared()
    imported = set(_imported_distributions("corecraft"))
    unused = environment - imported - RUNTIME_ONLY
    assert unused == set(), f"declared for the environment but imported nowhere in corecraft/: {sorted(unused)}"
