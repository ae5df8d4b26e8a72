"""The Quickstart demo runs and serves real requests over gRPC and HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_demo_runs() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "indexed 5 docs over gRPC" in out.stdout
    lines = out.stdout.splitlines()
    cat = lines.index("gRPC  search 'cat on the mat':")
    assert "mat" in lines[cat + 1] and "mat" in lines[cat + 2]
    http = next(line for line in lines if line.startswith("HTTP  search 'sleeping kitten':"))
    assert "kitten" in http.split(":", 1)[1]
    assert "closed: no process or port left behind" in out.stdout
