"""`python -m bench --quick` runs every case and prints them as JSON lines (CI checks that the benchmarks
run, never their timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = {"floor_grpc_echo", "import", "deployment", "flow3_start", "flow2", "arrays_100x256x256_f32",
         "scale_cpu_bound", "idle_footprint_flow2", "concurrent_clients"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_runs_every_case(tmp_path: Path) -> None:
    out_file = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRA_LOG_LEVEL", "ORCHESTRA_QUIET")}
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {line["case"] for line in lines} == CASES
    results = json.loads(out_file.read_text())
    assert results["flow2"]["grpc_single_doc"]["n"] == 200
    assert results["concurrent_clients"]["errors"] == 0
    assert results["idle_footprint_flow2"]["processes"] == 4
    assert "2-executor Flow, gRPC p50 / p99" in proc.stderr  # the readable table
