"""Throughput accounting: model FLOPs per token, a device's peak FLOP/s, and model FLOPs utilisation.

MFU (model FLOPs utilisation, PaLM appendix B) is the share of the device's peak that the model's own
arithmetic would use at the measured tokens/s. It counts the FLOPs the model needs, not the ones the
hardware runs: recomputation by reversible layers is left out, so two settings of the same model compare
on the work they get done.
"""

from __future__ import annotations

import math
import os

import torch

from reforbert.configuration_reforbert import ReforBertConfig
from reforbert.hardware import cpu_flags_and_mhz
from reforbert.modeling_reforbert import resolve_backend


def count_model_flops_per_token(model: torch.nn.Module, config: ReforBertConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (parameters outside the embedding tables) + attention.

    Embedding lookups cost no multiplications, so their tables are left out. Every other parameter
    takes part in one multiply-add per token forward (2 FLOPs) and two backward (4 FLOPs). Attention
    adds, per layer, 2 matmuls (scores and weighted sum) of 2 x hidden FLOPs per attended key, times 3
    for forward + backward: 12 x hidden x keys.

    ``config`` describes the attention (layers, hidden size, backend); ``model`` may be another
    implementation of the same shape (the throughput benchmark counts Hugging Face BERT this way).
    """
    embedding_params = sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Embedding)
    )
    params = sum(p.numel() for p in model.parameters()) - embedding_params
    attention = 12.0 * config.num_hidden_layers * config.hidden_size * attended_keys(config, seq_len)
    return 6.0 * params + attention


def attended_keys(config: ReforBertConfig, seq_len: int) -> float:
    """Keys each query attends to: every position with full attention; with LSH attention its own
    chunk and the chunks on both sides (up to 3 x bucket size) in each of ``lsh_num_hashes`` rounds."""
    if resolve_backend(config, seq_len) == "lsh":
        chunks = max(1, math.ceil(seq_len / config.lsh_bucket_size))
        return float(min(chunks, 3) * config.lsh_bucket_size * config.lsh_num_hashes)
    return float(seq_len)


def model_flops_utilization(
    tokens_per_second: float, flops_per_token: float, peak_tflops: float | None, processes: int
) -> float | None:
    """The share of ``processes`` devices' peak used by the model's FLOPs (None without a peak).

    ``tokens_per_second`` counts the tokens of every process; ``peak_tflops`` is one device's peak.
    """
    if not peak_tflops:
        return None
    return tokens_per_second * flops_per_token / (peak_tflops * 1e12 * processes)


# Dense peak TFLOP/s from the vendors' data sheets, by (name fragment, precision). bf16/fp16 use
# tensor cores; fp32 is plain fp32 (TF32 is off by default in torch for matmuls).
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("V100", {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7}),
    ("T4", {"bf16": 0.0, "fp16": 65.0, "fp32": 8.1}),
)


def default_peak_tflops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """A per-device peak for MFU and a sentence saying where it came from (None when unknown).

    GPUs: the data-sheet table above. CPUs: cores available to this process x clock x FLOPs per
    cycle per core for the widest unit the CPU reports (AMX tiles for bf16; AVX-512 or AVX2 FMA
    for fp32), an upper bound that real kernels approach only for large matmuls.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peaks in GPU_PEAK_TFLOPS:
            if fragment in name and peaks.get(precision):
                return peaks[precision], f"data-sheet dense {precision} peak of {fragment} ({name})"
        return None, f"no known peak for {name}; pass --peak-tflops"
    flags, mhz = cpu_flags_and_mhz()
    if mhz is None:
        return None, "CPU clock unknown; pass --peak-tflops"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_cycle, unit = _cpu_flops_per_cycle(flags, precision)
    peak = cores * mhz * 1e6 * per_cycle / 1e12
    return peak, f"CPU estimate: {cores} cores x {mhz:.0f} MHz x {per_cycle} FLOPs/cycle ({unit})"


def _cpu_flops_per_cycle(flags: set[str], precision: str) -> tuple[int, str]:
    """FLOPs per cycle per core of the widest unit the CPU reports, and the unit's name."""
    if precision == "bf16" and "amx_bf16" in flags:
        return 2048, "AMX bf16"
    if precision == "bf16" and "avx512_bf16" in flags:
        return 128, "AVX-512 bf16"
    if "avx512f" in flags:
        return 64, "AVX-512 fp32 FMA"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 fp32 FMA"
    return 8, "SSE fp32"
