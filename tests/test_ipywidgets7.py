"""The panel and the magics against ipywidgets 7.7.1 with IPython 7.34 (what Colab pins).

`.ci/run` builds that second environment in `.ci/venv-ipyw7` (or set ORCHESTRA_IPYW7_PYTHON to its
python); this test runs the panel, magic and kernel tests inside it, in a subprocess, and requires that
they ran and passed. Without the environment it skips and says how to build it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(os.environ.get("ORCHESTRA_IPYW7_PYTHON", ROOT / ".ci" / "venv-ipyw7" / "bin" / "python"))
TESTS = ["tests/test_notebook_panel.py", "tests/test_notebook_magics.py", "tests/test_magic_reload.py",
         "tests/test_notebook_kernel.py"]


@pytest.mark.slow
@pytest.mark.kernel
@pytest.mark.timeout(900)
def test_panel_and_magics_on_ipywidgets_7() -> None:
    if not PYTHON.exists():
        pytest.skip(f"no ipywidgets 7 environment at {PYTHON}; .ci/run builds it (see the script)")
    versions = subprocess.run([str(PYTHON), "-c", "import ipywidgets, IPython; print(ipywidgets.__version__, "
                               "IPython.__version__)"], capture_output=True, text=True, timeout=120, check=True)
    assert versions.stdout.split() == ["7.7.1", "7.34.0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    proc = subprocess.run([str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-o", "addopts=--strict-markers -ra", *TESTS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=850)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20, summary
