"""Benchmarks: `python -m bench [--quick] [--out bench/results.json]`; JSON lines, then a table.

Cases (all on this machine, client, gateway and executors sharing its cores):
* floor: bare grpcio echo between two processes on loopback (one round trip), and x3 for a 2-executor Flow
* import time of `orchestra_nb` in a fresh interpreter
* Deployment start-to-ready and single-doc latency
* Flow of 3 chained executors start-to-ready
* single small doc through a 2-executor Flow, gRPC and HTTP: p50 / p99
* throughput: 10,000 small docs, request_size=100, 2-executor Flow
* arrays: 100 docs x 256x256 float32 through 1 executor (MB one way / round-trip time)
* scale-out: CPU-bound executor, replicas 1 → 2 (speed-up)
* idle footprint of a running 2-executor Flow: processes and total RSS
* 200 concurrent clients on the gateway for 30 s (3 s with --quick): errors, p99, gateway memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
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


def bench_flow3_ready(runs: int = 3) -> dict[str, Any]:
    from bench.executors import Noop
    from orchestra_nb import Flow

    times = []
    for _ in range(runs):
        f = Flow().add(uses=Noop, name="a").add(uses=Noop, name="b").add(uses=Noop, name="c")
        t = time.perf_counter()
        f.start()
        times.append(time.perf_counter() - t)
        f.close()
    times_sorted = sorted(times)
    p90 = times_sorted[min(len(times) - 1, int(0.9 * len(times)))]
    median = statistics.median(times)
    return {"start_to_ready_s_median": round(median, 3), "p90_s": round(p90, 3),
            "p90_over_median": round(p90 / median, 2), "runs": [round(x, 3) for x in times]}


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_footprint() -> dict[str, Any]:

    code = textwrap.dedent("""
        import os, sys, threading
        from bench.executors import Noop
        from orchestra_nb import Doc, Flow
        f = Flow().add(uses=Noop, name='a').add(uses=Noop, name='b')
        with f:
            f.post('/x', Doc(text='warm'))
            print(os.getpid(), *f.pids(), flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        while line and not (line.split() and all(t.isdigit() for t in line.split())):  # skip other output
            line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        time.sleep(1.0)  # let the idle processes settle before reading their memory
        rss = {pid: _rss_kb(pid) for pid in pids}
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(30)
    return {"processes": len(pids), "rss_mb_total": round(sum(rss.values()) / 1024, 1),
            "rss_mb_each": [round(v / 1024, 1) for v in rss.values()], "first_is_parent": True}


def bench_concurrency(clients: int, seconds: float) -> dict[str, Any]:
    import asyncio

    from bench.executors import Noop
    from orchestra_nb import AsyncClient, Doc, Flow

    f = Flow().add(uses=Noop, name="a").add(uses=Noop, name="b")
    with f:
        gateway_pid = f._supervisor.gateway.pid

        async def run() -> dict[str, Any]:
            conns = [AsyncClient(port=f.port) for _ in range(clients)]
            lat: list[float] = []
            errors = 0
            rss_after_warmup = 0
            deadline = time.monotonic() + seconds
            warm = time.monotonic() + min(2.0, seconds / 3)

            async def worker(client: AsyncClient) -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    t = time.perf_counter()
                    try:
                        await client.post("/x", Doc(text="c"))
                        if time.monotonic() > warm:
                            lat.append(time.perf_counter() - t)
                    except Exception:
                        errors += 1

            async def sample() -> None:
                nonlocal rss_after_warmup
                await asyncio.sleep(max(0.0, warm - time.monotonic()))
                rss_after_warmup = _rss_kb(gateway_pid)

            await asyncio.gather(sample(), *(worker(c) for c in conns))
            rss_end = _rss_kb(gateway_pid)
            for c in conns:
                await c.close()
            return {"clients": clients, "seconds": seconds, "requests": len(lat), "errors": errors,
                    "p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)),
                    "requests_per_s": round(len(lat) / max(1e-9, seconds - (warm - (deadline - seconds)))),
                    "gateway_rss_mb_after_warmup": round(rss_after_warmup / 1024, 1),
                    "gateway_rss_mb_end": round(rss_end / 1024, 1)}

        return asyncio.run(run())


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


def bench_arrays(runs_per_size: int) -> dict[str, Any]:
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
            for _ in range(runs_per_size):
                t = time.perf_counter()
                back = dep.post("/x", docs, request_size=size)
                runs.append(time.perf_counter() - t)
            assert len(back) == 100
            best = min(runs)
            out[f"request_size_{size}"] = {"round_trip_s": round(best, 4), "mb_per_s": round(mb / best, 1)}
    floor = _bare_grpc_bytes(int(mb * 1e6), 2 * 1024 * 1024)
    out["bare_grpcio_one_hop_mb_per_s"] = floor
    out["vs_bare_grpcio_one_hop"] = round(out["request_size_100"]["mb_per_s"] / floor, 2)
    return out


def _bare_grpc_bytes(total: int, chunk: int) -> float:
    """Bare grpcio echo moving `total` bytes in `chunk`-sized messages, 8 in flight: MB/s one way.

    One hop only, so it is stricter than the 'same bytes over the same hops' floor (our path has two:
    client to gateway over gRPC, gateway to replica over a Unix socket)."""
    import grpc

    from orchestra_nb.runtime.ports import free_port
    from orchestra_nb.wire import grpc_options

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=grpc_options(1 << 30)) as channel:
            call = channel.unary_unary("/bench.Echo/Call")
            payload = b"x" * chunk
            call(payload, wait_for_ready=True)
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                pending = []
                for _ in range(max(1, total // chunk)):
                    if len(pending) >= 8:
                        pending.pop(0).result()
                    pending.append(call.future(payload))
                for future in pending:
                    future.result()
                runs.append(time.perf_counter() - t)
    finally:
        proc.kill()
        proc.wait()
    return round(total / 1e6 / min(runs), 1)


def bench_scale() -> dict[str, Any]:
    from bench.executors import Burn
    from orchestra_nb import Deployment, Doc

    docs = [Doc(text=str(i)) for i in range(16)]
    out: dict[str, Any] = {}
    for replicas in (1, 2):
        with Deployment(uses=Burn, replicas=replicas) as dep:
            dep.post("/x", docs[:2], parameters={"n": 1000}, request_size=1)
            t = time.perf_counter()
            dep.post("/x", docs, parameters={"n": 1_500_000}, request_size=1, prefetch=8)
            out[f"replicas_{replicas}_s"] = round(time.perf_counter() - t, 3)
    out["speedup"] = round(out["replicas_1_s"] / out["replicas_2_s"], 2)
    return out


def table(results: dict[str, Any]) -> str:
    """A readable summary of the headline numbers, with the goals of issue 10."""
    rows: list[tuple[str, str, str]] = []
    floor = results.get("floor_grpc_echo", {})
    f2 = results.get("flow2", {})
    if floor and f2:
        g = f2["grpc_single_doc"]
        rows.append(("2-executor Flow, gRPC p50 / p99", f"{g['p50_ms']} / {g['p99_ms']} ms",
                     f"<= {floor['three_round_trips_p50_ms']} ms (3 x floor {floor['p50_ms']} ms)"))
        h = f2["http_single_doc"]
        rows.append(("same over HTTP p50", f"{h['p50_ms']} ms", f"<= {round(1.3 * g['p50_ms'], 3)} ms"))
        rows.append(("small docs throughput", f"{f2['throughput']['docs_per_s']} docs/s", ">= 30000"))
    if "arrays_100x256x256_f32" in results:
        arrays = results["arrays_100x256x256_f32"]
        a = arrays["request_size_100"]
        rows.append(("100 x 256x256 f32, 1 executor", f"{a['mb_per_s']} MB/s ({arrays['vs_bare_grpcio_one_hop']} x "
                     f"bare grpcio's one hop, {arrays['bare_grpcio_one_hop_mb_per_s']} MB/s)",
                     ">= 400 MB/s, >= 0.5 x bare grpcio"))
    if "idle_footprint_flow2" in results:
        fp = results["idle_footprint_flow2"]
        rows.append(("idle 2-executor Flow", f"{fp['processes']} procs, {fp['rss_mb_total']} MB", "<= 4, <= 300 MB"))
    if "flow3_start" in results:
        s3 = results["flow3_start"]
        rows.append(("Flow of 3, start-to-ready", f"{s3['start_to_ready_s_median']} s (p90/med {s3['p90_over_median']})",
                     "<= 1.0 s, p90 <= 1.3 x median"))
    if "deployment" in results:
        rows.append(("one worker start-to-ready", f"{results['deployment']['start_to_ready_s']} s", "<= 0.35 s"))
    if "import" in results:
        rows.append(("import orchestra_nb", f"{results['import']['best_ms']} ms", "<= 150 ms"))
    if "scale_cpu_bound" in results:
        rows.append(("CPU-bound replicas 1 -> 2", f"{results['scale_cpu_bound']['speedup']} x", ">= 1.8 x"))
    if "concurrent_clients" in results:
        c = results["concurrent_clients"]
        rows.append((f"{c['clients']} concurrent clients, {c['seconds']} s",
                     f"{c['errors']} errors, p99 {c['p99_ms']} ms, gw RSS {c['gateway_rss_mb_after_warmup']} -> "
                     f"{c['gateway_rss_mb_end']} MB", "no error, memory flat"))
    width = max((len(r[0]) for r in rows), default=10)
    lines = [f"{'case'.ljust(width)} | measured | goal"]
    lines += [f"{a.ljust(width)} | {b} | {c}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--only", action="append", default=None, help="run only these cases")
    args = parser.parse_args()
    n = 200 if args.quick else 2000
    docs_total = 2000 if args.quick else 10_000
    clients, seconds = (50, 3.0) if args.quick else (200, 30.0)
    os.environ.setdefault("ORCHESTRA_LOG_LEVEL", "WARNING")
    os.environ.setdefault("ORCHESTRA_QUIET", "1")  # no start-up boxes between the JSON lines (children inherit it)
    cases = {
        "floor_grpc_echo": lambda: bench_floor(n),
        "import": bench_import,
        "deployment": lambda: bench_deployment(n),
        "flow3_start": lambda: bench_flow3_ready(3 if args.quick else 10),
        "flow2": lambda: bench_flow2(n, docs_total),
        "arrays_100x256x256_f32": lambda: bench_arrays(3 if args.quick else 8),  # best of: ~80 ms a run
        "scale_cpu_bound": bench_scale,
        "idle_footprint_flow2": bench_footprint,
        "concurrent_clients": lambda: bench_concurrency(clients, seconds),
    }
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()}}
    for name, case in cases.items():
        if args.only and name not in args.only:
            continue
        results[name] = case()
        print(json.dumps({"case": name, **results[name]}), flush=True)
    print(table(results), file=sys.stderr)
    text = json.dumps(results, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
