"""bench/gpu_check.py runs (on CPU here) and reports every replica as JSON, without torch in the parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.torch
def test_gpu_check_reports_each_replica() -> None:
    pytest.importorskip("torch", reason="the torch extra is not installed (pip install 'orchestra-nb[torch]')")
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--size", "64"], capture_output=True,
                         text=True, timeout=180, cwd=ROOT, env={**os.environ, "ORCHESTRA_QUIET": "1"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    replicas = report["replicas"]
    assert sorted(r["replica"] for r in replicas) == [0, 1]
    for r in replicas:
        assert r["cuda_available"] is False and r["runtime_device"] == "cpu"  # no GPU on this machine
        assert r["matmul_size"] == 64 and r["matmul_ms"] > 0
    assert report["parent_imported_torch"] is False
