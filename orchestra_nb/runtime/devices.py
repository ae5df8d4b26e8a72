"""Device assignment per replica (placeholder: CPU only; see the GPU issue)."""

from __future__ import annotations

from orchestra_nb.spec.models import ExecutorSpec

__all__ = ["assign_devices"]


def assign_devices(spec: ExecutorSpec) -> dict[tuple[int, int], dict[str, str]]:
    """Environment per (shard, replica); the `_device` key is what `runtime_args.device` shows."""
    return {(s, r): {"_device": "cpu"} for s in range(spec.shards) for r in range(spec.replicas)}
