"""The training commands' glibc allocator setting: when it applies, what it asks glibc, and opt-outs."""

from __future__ import annotations

import importlib
import platform
import sys

import pytest

from reforbert import allocator, cli


class FakeLibc:
    """Stands in for libc.so.6: records mallopt calls and answers with a fixed status."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.calls: list[tuple[int, int]] = []

        # A plain function, as ctypes' function objects, takes the argtypes/restype attributes.
        def mallopt(parameter: int, value: int) -> int:
            self.calls.append((parameter, value))
            return self.status

        self.mallopt = mallopt


@pytest.fixture
def fake_glibc(monkeypatch: pytest.MonkeyPatch):
    """A Linux/glibc process whose libc is a FakeLibc answering 1 (success); no malloc variables set."""
    libc = FakeLibc(status=1)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for name in (allocator.OPT_OUT_VARIABLE, *allocator.USER_MALLOC_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return libc


def test_glibc_is_asked_to_keep_blocks_up_to_the_limit(fake_glibc: FakeLibc) -> None:
    assert allocator.keep_freed_memory(limit_bytes=123_456) is True
    assert fake_glibc.calls == [
        (allocator.M_MMAP_THRESHOLD, 123_456),
        (allocator.M_TRIM_THRESHOLD, 123_456),
    ]


def test_a_refusal_by_glibc_is_reported(fake_glibc: FakeLibc) -> None:
    fake_glibc.status = 0
    assert allocator.keep_freed_memory() is False


def test_opting_out_leaves_the_allocator_alone(fake_glibc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.OPT_OUT_VARIABLE, "0")
    assert allocator.keep_freed_memory() is False
    assert fake_glibc.calls == []


@pytest.mark.parametrize("variable", allocator.USER_MALLOC_VARIABLES)
def test_a_users_own_malloc_settings_win(
    fake_glibc: FakeLibc, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "65536")
    assert allocator.keep_freed_memory() is False
    assert fake_glibc.calls == []


@pytest.mark.parametrize(("system", "libc"), [("darwin", ("", "")), ("linux", ("musl", "1.2"))])
def test_other_platforms_are_left_alone(
    fake_glibc: FakeLibc, monkeypatch: pytest.MonkeyPatch, system: str, libc: tuple[str, str]
) -> None:
    monkeypatch.setattr(allocator.sys, "platform", system)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: libc)
    assert allocator.keep_freed_memory() is False
    assert fake_glibc.calls == []


def test_not_applied_when_a_gpu_will_train(fake_glibc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert allocator.keep_freed_memory_when_training_on_cpu() is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert allocator.keep_freed_memory_when_training_on_cpu() is True


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc"
)
def test_the_real_glibc_accepts_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (allocator.OPT_OUT_VARIABLE, *allocator.USER_MALLOC_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() is True


@pytest.mark.parametrize(
    ("command", "module", "arguments", "applies"),
    [
        ("pretrain", "reforbert.pretraining", ["--data", "d", "--vocab", "v", "--output", "o"], True),
        ("finetune", "reforbert.finetuning", ["nsmc", "--model", "m", "--train", "t.txt"], True),
        ("report", "reforbert.report", ["results"], False),
    ],
)
def test_only_training_commands_apply_it(
    monkeypatch: pytest.MonkeyPatch, command: str, module: str, arguments: list[str], applies: bool
) -> None:
    applied: list[str] = []
    monkeypatch.setattr(allocator, "keep_freed_memory_when_training_on_cpu", lambda: applied.append(command))
    # The command's own work is replaced: only what main() does around it is under test.
    monkeypatch.setattr(importlib.import_module(module), "run", lambda args: 0)
    assert cli.main([command, *arguments]) == 0
    assert applied == ([command] if applies else [])
