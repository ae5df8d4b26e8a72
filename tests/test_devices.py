"""GPU discovery and assignment (issue 6) against simulated inventories.

There is no GPU here, so only the outermost boundary is faked: an `nvidia-smi` executable on PATH and a
`pynvml` module on an import path used only by these tests. Both read their inventory from an
environment variable, so spawned replicas see the same machine as the parent. Everything in between
(discovery, CUDA_VISIBLE_DEVICES parsing, assignment, the supervisor, real child processes) is real.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra_nb import Deployment, Doc, Executor, requests
from orchestra_nb.errors import ConfigError, DeviceError
from orchestra_nb.runtime.devices import assign_devices, discover, gpu_memory
from orchestra_nb.spec.models import ExecutorSpec

FAKE_NVML = '''
"""Test double of nvidia-ml-py: answers from $ORCHESTRA_TEST_FAKE_NVML, else 'library not found'."""
import json, os

NVML_DEVICE_MIG_ENABLE = 1
MIB = 1024 * 1024
_inv = []

class NVMLError(Exception):
    pass

class _Mem:
    def __init__(self, d):
        self.total, self.used = d["total"] * MIB, d["used"] * MIB
        self.free = self.total - self.used

def nvmlInit():
    global _inv
    raw = os.environ.get("ORCHESTRA_TEST_FAKE_NVML")
    if raw is None:
        raise NVMLError("NVML Shared Library Not Found")
    _inv = json.loads(raw)

def nvmlShutdown():
    pass

def nvmlDeviceGetCount():
    return len(_inv)

def nvmlDeviceGetHandleByIndex(i):
    if not 0 <= i < len(_inv):
        raise NVMLError("Invalid Argument")
    return _inv[i]

def nvmlDeviceGetHandleByUUID(uuid):
    for g in _inv:
        for d in [g, *g.get("migs", [])]:
            if d["uuid"] == uuid:
                return d
    raise NVMLError("Not Found")

def nvmlDeviceGetName(h):
    return h["name"]

def nvmlDeviceGetUUID(h):
    return h["uuid"]

def nvmlDeviceGetMemoryInfo(h):
    return _Mem(h)

def nvmlDeviceGetMigMode(h):
    if "migs" not in h:
        raise NVMLError("Not Supported")
    return (1, 1)

def nvmlDeviceGetMaxMigDeviceCount(h):
    return 7

def nvmlDeviceGetMigDeviceHandleByIndex(h, i):
    if i >= len(h["migs"]):
        raise NVMLError("Not Found")
    return h["migs"][i]
'''

FAKE_SMI = '''#!{python}
"""Test double of nvidia-smi: answers from $ORCHESTRA_TEST_FAKE_SMI, else fails like a missing driver."""
import json, os, sys

raw = os.environ.get("ORCHESTRA_TEST_FAKE_SMI")
if raw is None:
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    sys.exit(9)
gpus = json.loads(raw)
args = sys.argv[1:]
if args == ["-L"]:
    for i, g in enumerate(gpus):
        print(f"GPU {{i}}: {{g['name']}} (UUID: {{g['uuid']}})")
        for m, mig in enumerate(g.get("migs", [])):
            print(f"  MIG 1g.10gb     Device  {{m}}: (UUID: {{mig['uuid']}})")
    sys.exit(0)
if len(args) != 2 or not args[0].startswith("--query-gpu=") or args[1] != "--format=csv,noheader,nounits":
    print(f"fake nvidia-smi: unexpected arguments {{args}}", file=sys.stderr)
    sys.exit(2)
for i, g in enumerate(gpus):
    values = {{"index": i, "uuid": g["uuid"], "name": g["name"], "memory.total": g["total"],
              "memory.used": g["used"], "memory.free": g["total"] - g["used"],
              "mig.mode.current": "Enabled" if "migs" in g else "[N/A]"}}
    print(", ".join(str(values[f]) for f in args[0].split("=", 1)[1].split(",")))
'''


def uuid(i: int) -> str:
    return f"GPU-{i:08d}-aaaa-bbbb-cccc-dddddddddddd"


def inventory(n: int, used: list[int] | None = None, name: str = "NVIDIA H100") -> list[dict[str, Any]]:
    used = used or [0] * n
    return [{"name": name, "uuid": uuid(i), "total": 81559, "used": used[i]} for i in range(n)]


Machine = Callable[..., None]


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    """`machine(gpus, via='smi'|'nvml'|'both')` simulates this host's GPUs; by default there are none."""
    nvml_dir, bin_dir = tmp_path / "nvml", tmp_path / "bin"
    nvml_dir.mkdir()
    bin_dir.mkdir()
    (nvml_dir / "pynvml.py").write_text(FAKE_NVML)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI.format(python=sys.executable))
    smi.chmod(0o755)
    saved = sys.modules.pop("pynvml", None)
    monkeypatch.syspath_prepend(str(nvml_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    for var in ("CUDA_VISIBLE_DEVICES", "ORCHESTRA_TEST_FAKE_NVML", "ORCHESTRA_TEST_FAKE_SMI"):
        monkeypatch.delenv(var, raising=False)

    def simulate(gpus: list[dict[str, Any]], via: str = "smi") -> None:
        if via in ("smi", "both"):
            monkeypatch.setenv("ORCHESTRA_TEST_FAKE_SMI", json.dumps(gpus))
        if via in ("nvml", "both"):
            monkeypatch.setenv("ORCHESTRA_TEST_FAKE_NVML", json.dumps(gpus))

    yield simulate
    sys.modules.pop("pynvml", None)
    if saved is not None:
        sys.modules["pynvml"] = saved


def visible(spec: ExecutorSpec) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES per copy, shard-major, after checking the common keys."""
    out = assign_devices(spec)
    assert sorted(out) == [(s, r) for s in range(spec.shards) for r in range(spec.replicas)]
    for env in out.values():
        if env["_device"] == "cuda":
            assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["CUDA_VISIBLE_DEVICES"]
        else:
            assert env.get("CUDA_VISIBLE_DEVICES", "") == ""
    return [out[k].get("CUDA_VISIBLE_DEVICES") for k in sorted(out)]


def spec(gpus: Any = None, replicas: int = 1, shards: int = 1, env: dict[str, str] | None = None) -> ExecutorSpec:
    return ExecutorSpec(name="enc", gpus=gpus, replicas=replicas, shards=shards, env=env or {})


# ---- discovery ---------------------------------------------------------------------------------------
def test_nvidia_smi_inventory_is_read_when_nvml_is_missing(machine: Machine) -> None:
    machine(inventory(2, used=[1000, 500]), via="smi")
    inv = discover()
    assert inv.source == "nvidia-smi"
    assert [(g.index, g.uuid, g.name) for g in inv.gpus] == [(0, uuid(0), "NVIDIA H100"), (1, uuid(1), "NVIDIA H100")]
    assert [(g.memory_total, g.memory_used, g.memory_free) for g in inv.gpus] == [
        (81559, 1000, 80559), (81559, 500, 81059)]


def test_nvml_is_preferred_over_nvidia_smi(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(inventory(1), via="smi")
    monkeypatch.setenv("ORCHESTRA_TEST_FAKE_NVML", json.dumps(inventory(4, used=[1, 2, 3, 4])))
    inv = discover()
    assert inv.source == "nvml" and len(inv.gpus) == 4
    assert [g.memory_used for g in inv.gpus] == [1, 2, 3, 4]


def test_no_gpu_anywhere(machine: Machine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither NVML nor nvidia-smi
    inv = discover()
    assert (inv.gpus, inv.source) == ((), "none")
    assert "NVML unavailable" in inv.note and "nvidia-smi not on PATH" in inv.note
    assert visible(spec("auto", replicas=2)) == [None, None]  # auto falls back to CPU
    with pytest.raises(DeviceError, match=r"gpus='RR'.*none is visible.*0 visible.*gpus='auto'"):
        assign_devices(spec("RR"))


def test_failing_nvidia_smi_means_no_gpu(machine: Machine) -> None:
    inv = discover()  # the fake exits 9 like nvidia-smi without a driver
    assert inv.source == "none" and "failed" in inv.note


# ---- assignment --------------------------------------------------------------------------------------
def test_cpu_forms_need_no_discovery(machine: Machine) -> None:
    assert assign_devices(spec(None, replicas=2)) == {(0, 0): {"_device": "cpu"}, (0, 1): {"_device": "cpu"}}
    assert assign_devices(spec(0)) == {(0, 0): {"CUDA_VISIBLE_DEVICES": "", "_device": "cpu"}}
    assert assign_devices(spec("0")) == {(0, 0): {"CUDA_VISIBLE_DEVICES": "", "_device": "cpu"}}
    with pytest.raises(ValueError, match=r"gpus=.fast. is not understood.*'RR0:2'"):
        assign_devices(spec("fast"))


@pytest.mark.parametrize(("n", "replicas", "expected"), [
    (1, 3, ["0", "0", "0"]),
    (2, 3, ["0", "1", "0"]),
    (4, 2, ["0", "1"]),
    (4, 5, ["0", "1", "2", "3", "0"]),
])
def test_round_robin_over_1_2_and_4_gpus(machine: Machine, n: int, replicas: int, expected: list[str]) -> None:
    machine(inventory(n))
    assert visible(spec("RR", replicas=replicas)) == expected


def test_round_robin_slices_and_lists(machine: Machine) -> None:
    machine(inventory(4))
    assert visible(spec("RR0:2", replicas=3)) == ["0", "1", "0"]
    assert visible(spec("RR2:", replicas=3)) == ["2", "3", "2"]
    assert visible(spec("RR1,3", replicas=3)) == ["1", "3", "1"]
    with pytest.raises(DeviceError, match=r"positions 4\.\.5 do not all exist; 4 visible \(\[0\] GPU 0 NVIDIA H100"):
        assign_devices(spec("RR4:6"))
    with pytest.raises(DeviceError, match=r"GPU 5 does not exist; 4 visible"):
        assign_devices(spec("RR1,5"))


def test_rr_spelled_as_environment_variable(machine: Machine) -> None:
    machine(inventory(2))
    assert visible(spec(replicas=3, env={"CUDA_VISIBLE_DEVICES": "RR"})) == ["0", "1", "0"]
    assert visible(spec(replicas=2, env={"CUDA_VISIBLE_DEVICES": "RR1,0"})) == ["1", "0"]
    with pytest.raises(ConfigError, match=r"sets both gpus=1 and env CUDA_VISIBLE_DEVICES='RR'"):
        assign_devices(spec(1, env={"CUDA_VISIBLE_DEVICES": "RR"}))
    # a literal value is the user's own choice: it goes through, and the replica is told 'cuda'
    assert assign_devices(spec(env={"CUDA_VISIBLE_DEVICES": "1"})) == {(0, 0): {"_device": "cuda"}}


def test_auto_prefers_most_free_memory_then_round_robin(machine: Machine) -> None:
    machine(inventory(4, used=[60000, 100, 20000, 100]), via="nvml")
    assert visible(spec("auto", replicas=5)) == ["1", "3", "2", "0", "1"]


def test_auto_spreads_over_the_whole_flow(machine: Machine) -> None:
    import collections

    machine(inventory(2, used=[100, 5000]), via="nvml")
    # without a shared count, two 'auto' executors of one replica each both pick the freest GPU ...
    assert visible(spec("auto")) == visible(spec("auto")) == ["0"]
    # ... with the Flow's count (what the supervisor passes), the second goes to the other GPU
    placed: collections.Counter[str] = collections.Counter()
    first = assign_devices(spec("auto"), placed=placed)[(0, 0)]["CUDA_VISIBLE_DEVICES"]
    second = assign_devices(ExecutorSpec(name="other", gpus="auto"), placed=placed)[(0, 0)]["CUDA_VISIBLE_DEVICES"]
    third = assign_devices(ExecutorSpec(name="third", gpus="auto", replicas=2), placed=placed)
    assert (first, second) == ("0", "1")
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in third.values()) == ["0", "1"]


def test_number_of_gpus_per_replica(machine: Machine) -> None:
    machine(inventory(4))
    assert visible(spec(2, replicas=2)) == ["0,1", "2,3"]
    assert visible(spec(2, replicas=3)) == ["0,1", "2,3", "0,1"]
    assert visible(spec(3, replicas=2)) == ["0,1,2", "3,0,1"]
    with pytest.raises(DeviceError, match=r"each replica asks for 5 GPU\(s\) but 4 visible"):
        assign_devices(spec(5))


def test_explicit_list_per_replica(machine: Machine) -> None:
    machine(inventory(4))
    assert visible(spec([1, uuid(3)[:12], [0, 2], "2,3"], replicas=4)) == ["1", uuid(3), "0,2", "2,3"]
    with pytest.raises(ConfigError, match=r"one entry per replica \(2 for 2 replica\(s\)\), got 1.*\[\[0, 1\]\]"):
        assign_devices(spec([0], replicas=2))
    with pytest.raises(DeviceError, match=r"replica 1\): GPU 7 does not exist; 4 visible .*\[3\] GPU 3"):
        assign_devices(spec([0, 7], replicas=2))
    with pytest.raises(DeviceError, match=r"'GPU-404' matches no device"):
        assign_devices(spec(["GPU-404"]))
    with pytest.raises(DeviceError, match=r"'GPU-0000000' matches several devices"):
        assign_devices(spec(["GPU-0000000"]))


def test_shards_and_replicas_are_numbered_shard_major(machine: Machine) -> None:
    machine(inventory(4))
    assert visible(spec("RR", replicas=2, shards=2)) == ["0", "1", "2", "3"]
    assert visible(spec([3, 2, 1, 0], replicas=2, shards=2)) == ["3", "2", "1", "0"]


# ---- a CUDA_VISIBLE_DEVICES set in the parent --------------------------------------------------------
def test_preset_indices_restrict_and_renumber(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(inventory(4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible(spec("RR", replicas=3)) == ["2", "3", "2"]
    assert visible(spec([1])) == ["3"]  # position 1 of the visible set is physical GPU 3
    with pytest.raises(DeviceError, match=r"GPU 2 does not exist; 2 visible .*restricted by CUDA_VISIBLE_DEVICES='2,3'"):
        assign_devices(spec([2]))


def test_preset_uuids_are_passed_on_as_uuids(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(inventory(4), via="nvml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{uuid(3)},{uuid(1)[:14]}")
    assert visible(spec("RR", replicas=2)) == [uuid(3), uuid(1)]


def test_preset_empty_or_invalid_entries(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(inventory(4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match="none is visible"):
        assign_devices(spec("RR"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert discover().gpus == ()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,9,2")  # like CUDA: stop at the first that names nothing
    assert [g.index for g in discover().gpus] == [1]


@pytest.mark.parametrize("via", ["nvml", "smi"])
def test_mig_instances_are_assigned_by_uuid(machine: Machine, via: str) -> None:
    gpus = inventory(2)
    gpus[1]["migs"] = [{"name": "MIG 1g.10gb", "uuid": f"MIG-{i}aaa-bbbb", "total": 9984, "used": 10}
                       for i in range(3)]
    machine(gpus, via=via)
    inv = discover()
    assert [(g.index, g.mig, g.uuid) for g in inv.gpus] == [
        (0, None, uuid(0)), (1, 0, "MIG-0aaa-bbbb"), (1, 1, "MIG-1aaa-bbbb"), (1, 2, "MIG-2aaa-bbbb")]
    assert visible(spec("RR1:3", replicas=2)) == ["MIG-0aaa-bbbb", "MIG-1aaa-bbbb"]


def test_preset_mig_uuid_unknown_to_discovery_is_trusted(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(inventory(1))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-from-the-scheduler")
    assert visible(spec("auto", replicas=2)) == ["MIG-from-the-scheduler"] * 2


# ---- inside a replica --------------------------------------------------------------------------------
def test_gpu_memory_reports_the_replicas_own_devices(machine: Machine) -> None:
    machine(inventory(4, used=[0, 1000, 0, 4000]), via="nvml")
    report = gpu_memory({"CUDA_VISIBLE_DEVICES": f"1,{uuid(3)}"})
    assert [(r["id"], r["uuid"], r["memory_used_mib"], r["memory_free_mib"]) for r in report] == [
        ("1", uuid(1), 1000, 80559), (uuid(3), uuid(3), 4000, 77559)]
    assert gpu_memory({"CUDA_VISIBLE_DEVICES": ""}) == [] and gpu_memory({}) == []
    assert "error" in gpu_memory({"CUDA_VISIBLE_DEVICES": "9"})[0]


class DeviceReporter(Executor):
    """Tells what a replica was given, from inside the replica."""

    @requests
    def report(self, docs: list[Doc]) -> None:
        from orchestra_nb.runtime.devices import gpu_memory

        for d in docs:
            d.tags = {"device": self.runtime_args.device, "replica": self.runtime_args.replica_id,
                      "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "order": os.environ.get("CUDA_DEVICE_ORDER"), "memory": gpu_memory()}


def test_replicas_start_with_their_gpus(machine: Machine) -> None:
    machine(inventory(2, used=[100, 2000]), via="nvml")
    with Deployment(uses=DeviceReporter, replicas=3, gpus="RR") as dep:
        seen: dict[int, dict[str, Any]] = {}
        for _ in range(60):
            tags = dep.post("/", Doc())[0].tags
            seen[tags["replica"]] = tags
            if len(seen) == 3:
                break
        assert sorted(seen) == [0, 1, 2]
        for r, tags in seen.items():
            gpu = r % 2
            assert (tags["device"], tags["cvd"], tags["order"]) == ("cuda", str(gpu), "PCI_BUS_ID")
            assert [(m["uuid"], m["memory_used_mib"]) for m in tags["memory"]] == [(uuid(gpu), [100, 2000][gpu])]
        replicas = dep.status()["executors"]["devicereporter"]
        assert sorted(r["device"] for r in replicas) == ["cuda"] * 3
        # status() shows each replica's own GPU and its memory use (NVML)
        by_replica = {r["replica"]: [(g["uuid"], g["memory_used_mib"]) for g in r["gpus"]] for r in replicas}
        assert by_replica == {0: [(uuid(0), 100)], 1: [(uuid(1), 2000)], 2: [(uuid(0), 100)]}


def test_missing_gpus_fail_before_any_process_starts(machine: Machine) -> None:
    machine(inventory(1))
    dep = Deployment(uses=DeviceReporter, gpus=[0, 1], replicas=2)
    with pytest.raises(DeviceError, match=r"GPU 1 does not exist; 1 visible \(\[0\] GPU 0 NVIDIA H100"):
        dep.start()
    assert dep.pids() == []
    dep.close()



def test_gpus_from_yaml_and_the_flow_builder(machine: Machine) -> None:
    from orchestra_nb import Flow
    from orchestra_nb.spec.yaml import parse_config

    machine(inventory(4))
    flow_spec, _ = parse_config(textwrap.dedent("""
        jtype: Flow
        executors:
          - {name: rr, replicas: 2, gpus: RR2:4}
          - {name: pair, replicas: 2, gpus: "3,1"}
          - {name: two, replicas: 2, gpus: 2}
          - {name: env, replicas: 2, env: {CUDA_VISIBLE_DEVICES: "RR1,2"}}
          - {name: cpu, gpus: 0}
    """))
    got = {ex.name: visible(ex) for ex in flow_spec.executors}  # type: ignore[union-attr]
    assert got == {"rr": ["2", "3"], "pair": ["3", "1"], "two": ["0,1", "2,3"], "env": ["1", "2"], "cpu": [""]}
    built = Flow().add(name="enc", replicas=2, gpus=[[0, 3], "GPU-00000002"])
    assert visible(built.spec.executors[0]) == ["0,3", uuid(2)]
