"""GPU check for a machine with a GPU (issue 6): `python -m bench.gpu_check [--replicas 2] [--size 4096]`.

A Deployment with `gpus='auto'` starts the replicas; each reports what it was given and what torch sees
inside it (CUDA available, device name, CUDA_VISIBLE_DEVICES, a timed matmul on its device). The parent
never imports torch: that is checked and reported too. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from orchestra_nb import Deployment, Doc, DocList, Executor, requests


class GpuProbe(Executor):
    @requests
    def probe(self, docs: DocList[Doc], parameters: dict[str, Any]) -> dict[str, Any]:
        import os

        import torch

        size = int(parameters.get("size", 4096))
        available = torch.cuda.is_available()
        device = torch.device(self.runtime_args.device if available else "cpu")
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        (a @ b).sum().item()  # warm-up (kernels, allocator)
        started = time.perf_counter()
        for _ in range(5):
            c = a @ b
        if available:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / 5
        del c
        return {
            "replica": self.runtime_args.replica_id, "runtime_device": self.runtime_args.device,
            "cuda_available": available, "device_count": torch.cuda.device_count() if available else 0,
            "device_name": torch.cuda.get_device_name(0) if available else None,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"),
            "matmul_size": size, "matmul_ms": round(seconds * 1000, 3),
            "tflops": round(2 * size**3 / seconds / 1e12, 2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args(argv)
    from orchestra_nb.runtime.devices import discover

    inventory = discover()
    reports: dict[int, Any] = {}
    with Deployment(uses=GpuProbe, replicas=args.replicas, gpus="auto", timeout_ready=300) as dep:
        for _ in range(20 * args.replicas):  # least-outstanding balancing: ask until every replica answered
            out = dep.post("/", [Doc()], parameters={"size": args.size})
            found = out.results.get("gpuprobe", [])
            for report in found if isinstance(found, list) else [found]:  # one answer: a dict
                reports[report["replica"]] = report
            if len(reports) == args.replicas:
                break
        status = dep.status()["executors"]["gpuprobe"]
    result = {
        "inventory": {"source": inventory.source, "note": inventory.note,
                      "gpus": [str(g) for g in inventory.gpus]},
        "replicas": [reports[r] for r in sorted(reports)],
        "status": [{"replica": r.get("replica"), "device": r.get("device"), "gpus": r.get("gpus")} for r in status],
        "parent_imported_torch": "torch" in sys.modules,
    }
    print(json.dumps(result, indent=2))
    ok = len(reports) == args.replicas and not result["parent_imported_torch"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
