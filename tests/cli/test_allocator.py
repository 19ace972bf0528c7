"""`tunesmith train` re-executes itself once with the allocator setting (cli.MALLOC_ENV)."""

from __future__ import annotations

import sys

import pytest

from tunesmith import cli


class _Exec(Exception):
    pass


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((path, argv, env))
        raise _Exec

    monkeypatch.setattr(cli.os, "execve", fake_execve)
    for key in list(cli.os.environ):
        if key.startswith("MALLOC_") or key == "TUNESMITH_NO_REEXEC":
            monkeypatch.delenv(key)
    monkeypatch.setattr(cli.sys, "platform", "linux")
    return calls


def test_train_reexecs_with_the_mmap_threshold(execs: list[tuple]) -> None:
    with pytest.raises(_Exec):
        cli._reexec_with_allocator(["train", "run.yaml", "train.lr=1e-4"])
    path, argv, env = execs[0]
    assert path == sys.executable
    assert argv[1:] == ["-m", "tunesmith", "train", "run.yaml", "train.lr=1e-4"]
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(8 << 20)
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 30
    assert "MALLOC_MMAP_MAX_" not in env


@pytest.mark.parametrize("argv,env", [
    (["eval", "run"], {}),                               # not a training command
    (["train", "run.yaml"], {"MALLOC_MMAP_MAX_": "0"}),  # the user chose an allocator setting
    (["train", "run.yaml"], {"MALLOC_MMAP_THRESHOLD_": "1"}),
    (["train", "run.yaml"], {"TUNESMITH_NO_REEXEC": "1"}),
])
def test_no_reexec(execs: list[tuple], monkeypatch: pytest.MonkeyPatch, argv: list[str],
                   env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cli._reexec_with_allocator(argv)
    assert execs == []
