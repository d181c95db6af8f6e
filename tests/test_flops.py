"""FLOP and MFU accounting: counts checked against hand-computed numbers for tiny configurations."""

from __future__ import annotations

import pytest
import torch

from reforbert.configuration_reforbert import ReforBertConfig
from reforbert.flops import (
    attended_keys,
    count_model_flops_per_token,
    default_peak_tflops,
    model_flops_utilization,
)


def tiny_config(**overrides) -> ReforBertConfig:
    settings = dict(
        vocab_size=10,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        axial_position_shape=(8, 8),
        lsh_bucket_size=8,
        lsh_num_hashes=2,
        full_attention_max_length=32,
        attention_backend="full",
    )
    return ReforBertConfig(**{**settings, **overrides})


def test_flops_per_token_by_hand() -> None:
    # An embedding table (no multiplications) and a 4 -> 3 linear layer: 12 weights + 3 biases take part
    # in 2 FLOPs forward and 4 backward per token: 6 x 15 = 90. Attention, 1 layer of hidden 4 over 16
    # keys: 12 x 1 x 4 x 16 = 768.
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    assert count_model_flops_per_token(model, tiny_config(), seq_len=16) == 90 + 768
    # LSH over 64 positions in buckets of 8: 8 chunks, each query sees 3 chunks x 8 keys x 2 rounds = 48.
    assert (
        count_model_flops_per_token(model, tiny_config(attention_backend="lsh"), seq_len=64)
        == 90 + 12 * 4 * 48
    )


@pytest.mark.parametrize(
    ("backend", "seq_len", "keys"),
    [
        ("full", 100, 100),
        ("lsh", 64, 3 * 8 * 2),  # own chunk and both neighbours, 2 hashing rounds
        ("lsh", 8, 1 * 8 * 2),  # a single chunk has no neighbours
        ("lsh", 16, 2 * 8 * 2),
        ("auto", 32, 32),  # up to full_attention_max_length: full attention
        ("auto", 64, 3 * 8 * 2),  # beyond it: LSH
    ],
)
def test_attended_keys_follow_the_backend_the_model_uses(backend: str, seq_len: int, keys: int) -> None:
    assert attended_keys(tiny_config(attention_backend=backend), seq_len) == keys


def test_embedding_tables_of_the_real_model_are_not_counted() -> None:
    from reforbert.modeling_reforbert import ReforBertForPreTraining

    config = tiny_config(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
    model = ReforBertForPreTraining(config)
    # Word (10 x 32), axial rows and columns (8 x 16 each) and segment (2 x 32) tables.
    embedding_params = 10 * 32 + 8 * 16 + 8 * 16 + 2 * 32
    params = sum(p.numel() for p in model.parameters())
    expected = 6 * (params - embedding_params) + 12 * 2 * 32 * 16
    assert count_model_flops_per_token(model, config, seq_len=16) == expected


def test_model_flops_utilization() -> None:
    # 1000 tokens/s x 1e9 FLOPs per token = 1 TFLOP/s, on 2 devices of 2 TFLOP/s each: 25%.
    assert model_flops_utilization(1000.0, 1e9, 2.0, processes=2) == pytest.approx(0.25)
    assert model_flops_utilization(1000.0, 1e9, None, processes=1) is None


def test_cpu_peak_is_cores_times_clock_times_width(monkeypatch: pytest.MonkeyPatch) -> None:
    from reforbert import flops

    monkeypatch.setattr(
        flops, "cpu_flags_and_mhz", lambda: ({"avx512f", "avx512_bf16", "avx2", "fma"}, 2000.0)
    )
    monkeypatch.setattr(flops.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    peak, source = default_peak_tflops(torch.device("cpu"), "fp32")
    assert peak == pytest.approx(4 * 2000e6 * 64 / 1e12) and "AVX-512 fp32" in source
    peak, source = default_peak_tflops(torch.device("cpu"), "bf16")
    assert peak == pytest.approx(4 * 2000e6 * 128 / 1e12) and "AVX-512 bf16" in source
    monkeypatch.setattr(flops, "cpu_flags_and_mhz", lambda: (set(), None))
    assert default_peak_tflops(torch.device("cpu"), "fp32")[0] is None


def test_gpu_peak_comes_from_the_data_sheet_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert default_peak_tflops(torch.device("cuda"), "bf16")[0] == 989.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    peak, source = default_peak_tflops(torch.device("cuda"), "bf16")
    assert peak is None and "--peak-tflops" in source
