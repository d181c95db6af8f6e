"""The CPU's bf16 units decide the default precision of pretraining and fine-tuning."""

from __future__ import annotations

import pytest

from reforbert import finetuning, hardware, pretraining
from reforbert.pretraining_arguments import RECIPES


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2", "fma", "amx_bf16", "amx_tile"}, True),
        ({"avx2", "fma", "avx512f", "avx512_bf16"}, True),
        ({"avx2", "fma", "avx512f"}, False),
        ({"avx2", "fma"}, False),
        (set(), False),
    ],
)
def test_native_bf16_needs_amx_or_avx512_bf16(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], native: bool
) -> None:
    monkeypatch.setattr(hardware, "cpu_flags_and_mhz", lambda: (flags, 2000.0))
    assert hardware.cpu_has_native_bf16() is native


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_the_cpu_follows_its_bf16_units(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], native: bool, expected: str
) -> None:
    monkeypatch.setattr(pretraining, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(finetuning, "cpu_has_native_bf16", lambda: native)
    assert pretraining._resolve_precision("auto", device_is_cuda=False) == expected
    assert finetuning.resolve_bf16("auto", use_cuda=False) is native
    assert capsys.readouterr().err == ""


def test_bf16_asked_for_on_a_cpu_without_bf16_units_is_kept_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pretraining, "cpu_has_native_bf16", lambda: False)
    assert pretraining._resolve_precision("bf16", device_is_cuda=False) == "bf16"
    warning = capsys.readouterr().err
    assert "no bf16 units" in warning and "--precision fp32" in warning
    assert pretraining._resolve_precision("fp32", device_is_cuda=False) == "fp32"
    monkeypatch.setattr(pretraining, "cpu_has_native_bf16", lambda: True)
    assert pretraining._resolve_precision("bf16", device_is_cuda=False) == "bf16"
    assert capsys.readouterr().err == ""


def test_budget_recipes_leave_the_precision_to_the_hardware() -> None:
    # A recipe that named bf16 would run emulated, many times slower, on CPUs without bf16 units.
    assert {name: recipe["precision"] for name, recipe in RECIPES.items()} == dict.fromkeys(RECIPES, "auto")
