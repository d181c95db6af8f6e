"""Where one training step of ``mini`` spends its CPU time: the operators, by self time.

Builds the model, the batch and the loss exactly as ``model_throughput.py`` does for one of its
ReforBERT configurations (fp32, on the CPU), runs one warm-up step and profiles the next with
``torch.profiler``. Prints the table; the committed outputs sit beside the benchmark run they explain
(``results/targets-cpu/profile-*.txt``).

    OMP_NUM_THREADS=2 python benchmarks/profile_step.py lsh 8192 1 --reversible
    OMP_NUM_THREADS=2 python benchmarks/profile_step.py full 512 8
"""

from __future__ import annotations

import argparse

import torch

# The script's own folder is on sys.path.
from model_throughput import BenchConfig, build_model, masked_batch
from torch.profiler import ProfilerActivity, profile, record_function


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

    config = BenchConfig(
        model="reforbert",
        length=args.length,
        batch_size=args.batch_size,
        dtype="fp32",
        device="cpu",
        backend=args.backend,
        reversible=args.reversible,
    )
    torch.manual_seed(0)
    model, loss_fn = build_model(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids, labels = masked_batch(config, torch.device("cpu"))

    def train_step() -> None:
        loss_fn(model, input_ids, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

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
