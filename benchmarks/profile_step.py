"""Where one training step of ``mini`` spends its CPU time: the operators, by self time.

Builds ``ReforBertForMaskedLM`` as ``model_throughput.py`` does (random tokens, ~15% masked, AdamW),
runs one warm-up step and profiles the next with ``torch.profiler``. Prints the table; the committed
outputs sit beside the benchmark run they explain (``results/targets-cpu/profile-*.txt``).

    OMP_NUM_THREADS=2 python benchmarks/profile_step.py lsh 8192 1 --reversible
    OMP_NUM_THREADS=2 python benchmarks/profile_step.py full 512 8
"""

from __future__ import annotations

import argparse

import torch

# The script's own folder is on sys.path: the model is laid out exactly as in the throughput benchmark.
from model_throughput import BUCKET_SIZE, NUM_HASHES, axial_shape
from torch.profiler import ProfilerActivity, profile, record_function

from reforbert.configuration_reforbert import IGNORE_INDEX, MASK_ID, NUM_SPECIAL_TOKENS, ReforBertConfig
from reforbert.modeling_reforbert import ReforBertForMaskedLM


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("backend", choices=("full", "lsh"))
    parser.add_argument("length", type=int)
    parser.add_argument("batch_size", type=int)
    parser.add_argument("--reversible", action="store_true")
    parser.add_argument("--rows", type=int, default=18, help="Operators to list.")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = ReforBertConfig.from_preset(
        "mini",
        attention_backend=args.backend,
        reversible=args.reversible,
        lsh_bucket_size=BUCKET_SIZE,
        lsh_num_hashes=NUM_HASHES,
        axial_position_shape=axial_shape(args.length),
    )
    model = ReforBertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(NUM_SPECIAL_TOKENS, config.vocab_size, (args.batch_size, args.length))
    masked = torch.rand(tokens.shape) < 0.15
    labels = torch.where(masked, tokens, torch.full_like(tokens, IGNORE_INDEX))
    inputs = torch.where(masked, torch.full_like(tokens, MASK_ID), tokens)

    def train_step() -> None:
        model(input_ids=inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    train_step()  # warm-up: allocator and kernel selection
    with profile(activities=[ProfilerActivity.CPU]) as profiler, record_function("train_step"):
        train_step()
    print(
        f"mini, {args.backend}, reversible={args.reversible}, {args.length} x {args.batch_size}, fp32, "
        f"torch threads {torch.get_num_threads()}"
    )
    table = profiler.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=45
    )
    print(table)


if __name__ == "__main__":
    main()
