"""GPU discovery and per-replica device assignment, done in the parent without touching CUDA.

Decisions, and why:

* **Discovery never initialises CUDA.** The parent is often a Jupyter kernel; a kernel that initialised
  CUDA cannot hand it to forked children, and importing torch there costs seconds and gigabytes. We ask
  NVML (the `pynvml` module of `nvidia-ml-py`) when it imports and initialises, else run
  `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`, else report no GPUs. Both number GPUs in
  PCI bus order, so every child also gets `CUDA_DEVICE_ORDER=PCI_BUS_ID` and CUDA agrees with them.
* **An existing `CUDA_VISIBLE_DEVICES` restricts the set**, as CUDA itself would: indices, `GPU-` and
  `MIG-` UUIDs (unique prefixes too), '' or '-1' for none. Like CUDA, parsing stops at the first entry
  that names nothing (with a warning). A `MIG-` UUID that discovery cannot see (nvidia-smi without MIG
  listing) is trusted, since a scheduler put it there.
* **Numbers in `gpus=` are positions in that visible set** (what `cuda:N` would mean in the parent);
  without a `CUDA_VISIBLE_DEVICES` they are the physical indices. The child gets the physical identifier
  (its index, or its UUID when it was named by one, always for MIG), so a child never depends on the
  parent's restriction.
* `gpus=` forms: None (CPU, environment untouched), 0 (CPU, `CUDA_VISIBLE_DEVICES=''` so the replica
  cannot grab a GPU by accident), 'auto' (one device per replica, most free memory first, then round
  robin; CPU when there is no GPU, so one notebook runs on Colab CPU and GPU alike), 'RR' / 'RR0:2' /
  'RR1,3' (Jina's round robin over all, a slice, or a list of positions; the spellings '1,3' and
  `env={'CUDA_VISIBLE_DEVICES': 'RR...'}` mean the same), an int n (n devices per replica, rotating),
  or a list with one entry per copy (shard-major: shard 0's replicas, then shard 1's), each entry a
  position, a UUID or a list of those. Explicit asks for GPUs that do not exist raise `DeviceError`
  listing what exists; more replicas than GPUs share them round robin, as in Jina and dask-cuda.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import os
import re
import shutil
import subprocess
from typing import Any

from orchestra_nb.errors import ConfigError, DeviceError
from orchestra_nb.spec.models import ExecutorSpec

__all__ = ["GPU", "Inventory", "assign_devices", "discover", "gpu_memory", "parse_gpus"]

log = logging.getLogger("orchestra_nb.devices")

_CVD = "CUDA_VISIBLE_DEVICES"
_RR = re.compile(r"^RR(?:(?P<start>\d*):(?P<stop>\d*)|(?P<list>\d+(?:,\d+)*))?$")
_SMI_FIELDS = "index,uuid,name,memory.total,memory.used,memory.free,mig.mode.current"
_SMI_MIG = re.compile(r"^\s+MIG\s+(?P<profile>\S+)\s+Device\s+(?P<mig>\d+):\s+\(UUID:\s+(?P<uuid>MIG-[^)\s]+)\)")
_SMI_GPU = re.compile(r"^GPU\s+(?P<index>\d+):.*\(UUID:\s+(?P<uuid>GPU-[^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class GPU:
    """One assignable device: a whole GPU or a MIG instance. Memory in MiB, None when unknown."""

    index: int
    uuid: str
    name: str
    memory_total: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    mig: int | None = None
    by_uuid: bool = False  # named by UUID in the parent's CUDA_VISIBLE_DEVICES: pass it on as such

    @property
    def ident(self) -> str:
        """What the child's CUDA_VISIBLE_DEVICES gets."""
        return self.uuid if self.mig is not None or self.by_uuid else str(self.index)

    def describe(self) -> str:
        where = f"GPU {self.index}" + (f" MIG {self.mig}" if self.mig is not None else "")
        mem = f", {self.memory_free}/{self.memory_total} MiB free" if self.memory_total is not None else ""
        return f"{where} {self.name} ({self.uuid}{mem})"


@dataclasses.dataclass(frozen=True)
class Inventory:
    """The devices this process may hand out, how they were found, and the restriction applied."""

    gpus: tuple[GPU, ...]
    source: str  # 'nvml', 'nvidia-smi' or 'none'
    note: str = ""  # why nothing was found, or which CUDA_VISIBLE_DEVICES restricted the set

    def describe(self) -> str:
        found = "; ".join(f"[{i}] {g.describe()}" for i, g in enumerate(self.gpus)) or "no GPU"
        extra = f"; {self.note}" if self.note else ""
        return f"{len(self.gpus)} visible ({found}), found by {self.source}{extra}"


# ---- discovery -------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mib(value: int) -> int:
    return int(value) // (1024 * 1024)


def _nvml() -> Any:
    """The pynvml module, initialised; raises when missing or when there is no driver."""
    nvml = importlib.import_module("pynvml")
    nvml.nvmlInit()
    return nvml


def _from_nvml() -> list[GPU]:
    nvml = _nvml()
    try:
        out: list[GPU] = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name, uuid = _text(nvml.nvmlDeviceGetName(h)), _text(nvml.nvmlDeviceGetUUID(h))
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            migs = _nvml_migs(nvml, h, i, name)
            if migs:
                out.extend(migs)
            else:
                out.append(GPU(i, uuid, name, _mib(mem.total), _mib(mem.used), _mib(mem.free)))
        return out
    finally:
        nvml.nvmlShutdown()


def _nvml_migs(nvml: Any, handle: Any, index: int, name: str) -> list[GPU]:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # not MIG capable
        return []
    if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    out = []
    for m in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, m)
        except Exception:  # an empty slot
            continue
        mem = nvml.nvmlDeviceGetMemoryInfo(mh)
        out.append(GPU(index, _text(nvml.nvmlDeviceGetUUID(mh)), f"{name} MIG", _mib(mem.total),
                       _mib(mem.used), _mib(mem.free), mig=m))
    return out


def _int_or_none(field: str) -> int | None:
    try:
        return int(float(field))
    except ValueError:  # '[N/A]'
        return None


def _from_smi(exe: str) -> list[GPU]:
    query = [exe, f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader,nounits"]
    text = subprocess.run(query, capture_output=True, text=True, timeout=15, check=True).stdout
    gpus, mig_enabled = [], False
    for line in text.splitlines():
        if not line.strip():
            continue
        f = [x.strip() for x in line.split(",")]
        if len(f) < 6:
            raise ValueError(f"unexpected nvidia-smi line {line!r}")
        mig_enabled |= len(f) > 6 and f[6].lower() == "enabled"
        gpus.append(GPU(int(f[0]), f[1], f[2], _int_or_none(f[3]), _int_or_none(f[4]), _int_or_none(f[5])))
    if not mig_enabled:
        return gpus
    # MIG instances are not in --query-gpu; `nvidia-smi -L` lists them under their GPU
    listing = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=15, check=True).stdout
    by_index = {g.index: g for g in gpus}
    migs: dict[int, list[GPU]] = {}
    parent: GPU | None = None
    for line in listing.splitlines():
        if (m := _SMI_GPU.match(line)):
            parent = by_index.get(int(m["index"]))
        elif (m := _SMI_MIG.match(line)) and parent is not None:
            migs.setdefault(parent.index, []).append(
                GPU(parent.index, m["uuid"], f"{parent.name} MIG {m['profile']}", mig=int(m["mig"])))
    return [x for g in gpus for x in migs.get(g.index, [g])]


def discover(environ: dict[str, str] | None = None) -> Inventory:
    """The devices this process may use: NVML, else nvidia-smi, else none; restricted by CUDA_VISIBLE_DEVICES."""
    env = os.environ if environ is None else environ
    source, why, gpus = "none", "", []
    try:
        gpus, source = _from_nvml(), "nvml"
    except Exception as exc:  # not installed, no driver, no permission
        why = f"NVML unavailable ({type(exc).__name__}: {exc})"
        exe = shutil.which("nvidia-smi", path=env.get("PATH"))
        if exe is None:
            why += "; nvidia-smi not on PATH"
        else:
            try:
                gpus, source = _from_smi(exe), "nvidia-smi"
            except (OSError, ValueError, subprocess.SubprocessError) as smi_exc:
                why += f"; {exe} failed: {smi_exc}"
                log.warning("GPU discovery: %s", why)
    if source != "none":
        why = ""
    if _CVD in env:
        gpus = _restrict(gpus, env[_CVD])
        why = f"{why}; " if why else ""
        why += f"restricted by CUDA_VISIBLE_DEVICES={env[_CVD]!r} in this process"
    return Inventory(tuple(gpus), source, why)


def _restrict(gpus: list[GPU], visible: str) -> list[GPU]:
    """The devices CUDA would show under `visible`, in its order."""
    entries = [e.strip() for e in visible.split(",")]
    out: list[GPU] = []
    whole = [g for g in gpus if g.mig is None]
    for entry in entries:
        if not entry or entry.startswith("-"):
            break
        found: GPU | None = None
        if entry.isdigit():
            found = next((g for g in whole if g.index == int(entry)), None)
        else:
            hits = [g for g in gpus if g.uuid.startswith(entry)]
            if len(hits) == 1:
                found = dataclasses.replace(hits[0], by_uuid=True)
            elif not hits and entry.startswith("MIG-"):
                found = GPU(-1, entry, "MIG device (not listed by discovery)", mig=0)
        if found is None:
            log.warning("CUDA_VISIBLE_DEVICES=%r: %r names no single device; like CUDA, the entries "
                        "from there on are ignored", visible, entry)
            break
        if found not in out:
            out.append(found)
    return out


# ---- assignment ------------------------------------------------------------------------------------
def parse_gpus(value: Any) -> Any:
    """Normalise a `gpus=` value: digit strings become ints; invalid forms raise ConfigError."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\d+(?:,\d+)+", value.replace(" ", "")):
        return "RR" + value.replace(" ", "")  # '0,1' (YAML, CLI flags): those GPUs, round robin
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, str) and (value.strip().lower() == "auto" or _RR.match(value.strip())):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(
        f"gpus={value!r} is not understood; use None or 0 (CPU), 'auto', 'RR', 'RR0:2', 'RR1,3', "
        "a number of GPUs per replica, or a list with one entry per replica (e.g. [0, 1] or [[0, 1]])")


def _picks(entry: Any, inv: Inventory, where: str) -> list[GPU]:
    """The devices one list entry names: a position, a UUID (prefix), or a list of those."""
    if isinstance(entry, (list, tuple)):
        return [g for e in entry for g in _picks(e, inv, where)]
    if isinstance(entry, str) and "," in entry:
        return _picks(entry.split(","), inv, where)
    if isinstance(entry, int) or (isinstance(entry, str) and entry.strip().isdigit()):
        pos = int(entry)
        if 0 <= pos < len(inv.gpus):
            return [inv.gpus[pos]]
        raise DeviceError(f"{where}: GPU {pos} does not exist; {inv.describe()}")
    if isinstance(entry, str):
        hits = [g for g in inv.gpus if g.uuid.startswith(entry.strip())]
        if len(hits) == 1:
            return [dataclasses.replace(hits[0], by_uuid=True)]
        what = "matches several devices" if hits else "matches no device"
        raise DeviceError(f"{where}: {entry!r} {what}; {inv.describe()}")
    raise ConfigError(f"{where}: a list entry is a GPU position, a UUID or a list of those, not {entry!r}")


def _env(gpus: list[GPU]) -> dict[str, str]:
    idents = list(dict.fromkeys(g.ident for g in gpus))
    return {_CVD: ",".join(idents), "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "_device": "cuda"}


def assign_devices(spec: ExecutorSpec, inventory: Inventory | None = None,
                   placed: collections.Counter[str] | None = None) -> dict[tuple[int, int], dict[str, str]]:
    """Environment additions per (shard, replica); the `_device` key is what `runtime_args.device` shows.

    Discovery runs only when the spec asks for GPUs; `inventory` replaces it (for callers that already
    discovered once).
    """
    keys = [(s, r) for s in range(spec.shards) for r in range(spec.replicas)]
    name = spec.name or "executor"
    env_cvd = spec.env.get(_CVD)
    gpus = parse_gpus(spec.gpus)
    if env_cvd is not None and _RR.match(env_cvd.strip()):
        if gpus is not None:
            raise ConfigError(f"executor {name!r} sets both gpus={spec.gpus!r} and "
                              f"env CUDA_VISIBLE_DEVICES={env_cvd!r}; keep one of them")
        gpus = env_cvd.strip()
    elif env_cvd is not None:
        if gpus is not None:
            raise ConfigError(f"executor {name!r} sets both gpus={spec.gpus!r} and "
                              f"env CUDA_VISIBLE_DEVICES={env_cvd!r}; keep one of them")
        # the user's own value goes through unchanged; they know their machine
        device = "cpu" if not env_cvd.strip() or env_cvd.strip().startswith("-") else "cuda"
        return {k: {"_device": device} for k in keys}
    if gpus is None:
        return {k: {"_device": "cpu"} for k in keys}
    if gpus == 0:
        return {k: {_CVD: "", "_device": "cpu"} for k in keys}

    where = f"executor {name!r} with gpus={gpus!r}"
    inv = discover() if inventory is None else inventory
    n = len(inv.gpus)
    if isinstance(gpus, str) and gpus.lower() == "auto":
        if not n:
            log.info("%s: no GPU found (%s); its replicas run on CPU", where, inv.note or inv.source)
            return {k: {"_device": "cpu"} for k in keys}
        order = sorted(inv.gpus, key=lambda g: -(g.memory_free or 0))  # stable: ties keep PCI order
        if placed is None:
            return {k: _env([order[i % n]]) for i, k in enumerate(keys)}
        # across the executors of one Flow: each replica goes to the GPU with the fewest 'auto' replicas
        # so far, then the most free memory
        out = {}
        for k in keys:
            gpu = min(order, key=lambda g: placed[g.uuid])
            placed[gpu.uuid] += 1
            out[k] = _env([gpu])
        return out
    if isinstance(gpus, str):
        m = _RR.match(gpus)
        assert m is not None  # parse_gpus checked
        if m["list"]:
            pool = _picks([int(x) for x in m["list"].split(",")], inv, where)
        elif m["start"] is not None:
            start = int(m["start"] or 0)
            stop = int(m["stop"]) if m["stop"] else n
            if not (0 <= start < stop <= n):
                raise DeviceError(f"{where}: positions {start}..{stop - 1} do not all exist; {inv.describe()}")
            pool = list(inv.gpus[start:stop])
        else:
            pool = list(inv.gpus)
        if not pool:
            raise DeviceError(f"{where}: asks for GPUs but none is visible; {inv.describe()}. "
                              "Use gpus='auto' to fall back to CPU, or None to run on CPU")
        return {k: _env([pool[i % len(pool)]]) for i, k in enumerate(keys)}
    if isinstance(gpus, int):
        if gpus > n:
            raise DeviceError(f"{where}: each replica asks for {gpus} GPU(s) but {inv.describe()}")
        return {k: _env([inv.gpus[(i * gpus + j) % n] for j in range(gpus)]) for i, k in enumerate(keys)}
    if len(gpus) != len(keys):
        shape = f"{spec.replicas} replica(s)" + (f" x {spec.shards} shards" if spec.shards > 1 else "")
        raise ConfigError(f"{where}: a list needs one entry per replica ({len(keys)} for {shape}), "
                          f"got {len(gpus)}; to give one replica several GPUs, nest them: [[0, 1]]")
    out = {}
    for k, entry in zip(keys, gpus, strict=True):
        picked = _picks(entry, inv, f"{where} (shard {k[0]}, replica {k[1]})")
        out[k] = _env(picked) if picked else {_CVD: "", "_device": "cpu"}
    return out


# ---- inside a replica: memory of its own devices, for status --------------------------------------
def gpu_memory(environ: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Name, UUID and memory (MiB) of the devices in this process's CUDA_VISIBLE_DEVICES, via NVML.

    Cheap enough for every status call; returns [] without NVML or without assigned GPUs. It never
    initialises CUDA.
    """
    env = os.environ if environ is None else environ
    visible = [e.strip() for e in env.get(_CVD, "").split(",") if e.strip()]
    if not visible or visible[0].startswith("-"):
        return []
    try:
        nvml = _nvml()
    except Exception:
        return []
    out: list[dict[str, Any]] = []
    try:
        for ident in visible:
            try:
                h = (nvml.nvmlDeviceGetHandleByIndex(int(ident)) if ident.isdigit()
                     else nvml.nvmlDeviceGetHandleByUUID(ident))
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                out.append({"id": ident, "name": _text(nvml.nvmlDeviceGetName(h)),
                            "uuid": _text(nvml.nvmlDeviceGetUUID(h)), "memory_total_mib": _mib(mem.total),
                            "memory_used_mib": _mib(mem.used), "memory_free_mib": _mib(mem.free)})
            except Exception as exc:
                out.append({"id": ident, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        nvml.nvmlShutdown()
    return out
