"""Benchmarks: `python -m bench.run [--quick] [--out bench/results.json]`; prints JSON.

Cases (all on this machine, client, gateway and executors sharing its cores):
* floor: bare grpcio echo between two processes on loopback (one round trip), and ×3 for a 2-executor Flow
* import time of `orchestra_nb` in a fresh interpreter
* Deployment start-to-ready and single-doc latency
* Flow of 3 chained executors start-to-ready
* single small doc through a 2-executor Flow, gRPC and HTTP: p50 / p99
* throughput: 10,000 small docs, request_size=100, 2-executor Flow
* arrays: 100 docs × 256×256 float32 through 1 executor (MB one way / round-trip time)
* scale-out: CPU-bound executor, replicas 1 → 2 (speed-up)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def latencies(call: Any, n: int, warmup: int = 50) -> dict[str, float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return {"p50_ms": ms(pct(out, 0.5)), "p99_ms": ms(pct(out, 0.99)), "mean_ms": ms(statistics.fmean(out)), "n": n}


def bench_floor(n: int) -> dict[str, Any]:
    import grpc

    from orchestra_nb.runtime.ports import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/bench.Echo/Call")
            payload = b"x" * 200
            result = latencies(lambda: call(payload, wait_for_ready=True), n)
    finally:
        proc.kill()
        proc.wait()
    result["three_round_trips_p50_ms"] = round(result["p50_ms"] * 3, 3)
    return result


def bench_import() -> dict[str, Any]:
    code = "import time; t=time.perf_counter(); import orchestra_nb; print(time.perf_counter()-t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(5)]
    return {"best_ms": ms(min(runs)), "median_ms": ms(statistics.median(runs))}


def bench_deployment(n: int) -> dict[str, Any]:
    from bench.executors import Noop
    from orchestra_nb import Deployment, Doc

    dep = Deployment(uses=Noop)
    t = time.perf_counter()
    dep.start()
    ready = time.perf_counter() - t
    try:
        lat = latencies(lambda: dep.post("/x", Doc(text="hello")), n)
    finally:
        dep.close()
    return {"start_to_ready_s": round(ready, 3), "single_doc": lat}


def bench_flow3_ready() -> dict[str, Any]:
    from bench.executors import Noop
    from orchestra_nb import Flow

    times = []
    for _ in range(3):
        f = Flow().add(uses=Noop, name="a").add(uses=Noop, name="b").add(uses=Noop, name="c")
        t = time.perf_counter()
        f.start()
        times.append(time.perf_counter() - t)
        f.close()
    return {"start_to_ready_s_median": round(statistics.median(times), 3), "runs": [round(x, 3) for x in times]}


def bench_flow2(n: int, docs_total: int) -> dict[str, Any]:
    import httpx

    from bench.executors import Noop
    from orchestra_nb import Doc, Flow

    f = Flow(protocol=["grpc", "http"]).add(uses=Noop, name="a").add(uses=Noop, name="b")
    with f:
        grpc_lat = latencies(lambda: f.post("/x", Doc(text="hello")), n)
        with httpx.Client(base_url=f"http://127.0.0.1:{f.ports['http']}") as client:
            body = {"on": "/x", "docs": [{"text": "hello"}]}
            http_lat = latencies(lambda: client.post("/post", json=body).raise_for_status(), n)
        docs = [Doc(text=f"doc {i}") for i in range(docs_total)]
        f.post("/x", docs[:200], request_size=100)
        t = time.perf_counter()
        out = f.post("/x", docs, request_size=100)
        elapsed = time.perf_counter() - t
        assert len(out) == docs_total
    return {"grpc_single_doc": grpc_lat, "http_single_doc": http_lat,
            "throughput": {"docs": docs_total, "request_size": 100, "seconds": round(elapsed, 3),
                           "docs_per_s": round(docs_total / elapsed)}}


def bench_arrays() -> dict[str, Any]:
    from bench.executors import Noop
    from orchestra_nb import Deployment, Doc

    rng = np.random.default_rng(0)
    docs = [Doc(tensor=rng.standard_normal((256, 256)).astype(np.float32)) for _ in range(100)]
    mb = sum(d.tensor.nbytes for d in docs) / 1e6
    out: dict[str, Any] = {"mb_one_way": round(mb, 1)}
    with Deployment(uses=Noop) as dep:
        for size in (100, 10):
            dep.post("/x", docs, request_size=size)
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                back = dep.post("/x", docs, request_size=size)
                runs.append(time.perf_counter() - t)
            assert len(back) == 100
            best = min(runs)
            out[f"request_size_{size}"] = {"round_trip_s": round(best, 4), "mb_per_s": round(mb / best, 1)}
    return out


def bench_scale() -> dict[str, Any]:
    from bench.executors import Burn
    from orchestra_nb import Deployment, Doc

    docs = [Doc(text=str(i)) for i in range(16)]
    out: dict[str, Any] = {}
    for replicas in (1, 2):
        with Deployment(uses=Burn, replicas=replicas) as dep:
            dep.post("/x", docs[:2], parameters={"n": 1000}, request_size=1)
            t = time.perf_counter()
            dep.post("/x", docs, parameters={"n": 300_000}, request_size=1, prefetch=8)
            out[f"replicas_{replicas}_s"] = round(time.perf_counter() - t, 3)
    out["speedup"] = round(out["replicas_1_s"] / out["replicas_2_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--only", action="append", default=None, help="run only these cases")
    args = parser.parse_args()
    n = 200 if args.quick else 2000
    docs_total = 2000 if args.quick else 10_000
    os.environ.setdefault("ORCHESTRA_LOG_LEVEL", "WARNING")
    cases = {
        "floor_grpc_echo": lambda: bench_floor(n),
        "import": bench_import,
        "deployment": lambda: bench_deployment(n),
        "flow3_start": bench_flow3_ready,
        "flow2": lambda: bench_flow2(n, docs_total),
        "arrays_100x256x256_f32": bench_arrays,
        "scale_cpu_bound": bench_scale,
    }
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()}}
    for name, case in cases.items():
        if args.only and name not in args.only:
            continue
        results[name] = case()
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
