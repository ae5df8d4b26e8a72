"""The Binder configuration opens the notebooks ready to run: what repo2docker reads is well formed,
and every module a notebook imports is installed by it (the package, its notebook extra, or
binder/requirements.txt). Imports guarded by `try/except ImportError` are optional and exempt."""

from __future__ import annotations

import ast
import json
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check is the same on every version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~\[;#]", requirement.strip(), maxsplit=1)[0]).lower()


def _installed_by_binder() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["notebook"]]
    reqs += [line for line in (BINDER / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {_name(r) for r in reqs} | {"orchestra-nb"}


def _imports(source: str) -> set[str]:
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            optional.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names)


def test_binder_files_are_what_repo2docker_reads() -> None:
    post_build = BINDER / "postBuild"
    assert post_build.stat().st_mode & 0o111, "binder/postBuild must be executable"
    text = post_build.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert re.search(r"pip install .*-e \"?\.\[notebook\]", text)
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert match, runtime
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert int(match.group(1)) >= int(re.search(r">=3\.(\d+)", requires).group(1))  # type: ignore[union-attr]
    assert "graphviz" in (BINDER / "apt.txt").read_text().split()


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_import_is_installed_on_binder(path: Path) -> None:
    cells = json.loads(path.read_text())["cells"]
    modules: set[str] = set()
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and not source.startswith("%%"):  # a cell magic's body is not Python
            modules |= _imports(source)
    dists = packages_distributions()
    installed = _installed_by_binder()
    missing = {m: dists.get(m, [m]) for m in modules
               if not any(_name(d) in installed for d in dists.get(m, [m]))}
    assert not missing, f"{path.name} imports {sorted(missing)}, which Binder does not install; add them to " \
                        "binder/requirements.txt (or the notebook extra), or guard the import"
