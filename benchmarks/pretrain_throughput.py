"""Pretraining throughput: ReforBERT vs Hugging Face BERT of the same shape, and the loop's overhead.

For each model and each precision (fp32, bf16 autocast) this runs

* the pretraining engine (``reforbert.pretraining.pretrain``: data order, dynamic masking,
  accumulation, clipping, logging) on synthetic full-length shards, and
* the bare step: the same model, batches collated once beforehand, forward + backward over the
  same micro-batches and an AdamW step in a plain loop.

The models: ReforBERT ``mini`` with full attention, with reversible layers (``reforbert``) and without
(``reforbert-norev``); Hugging Face ``BertForPreTraining`` of the same shape (4 layers, hidden 256,
4 heads, feed-forward 1024, SDPA attention) with its own default attention dropout of 0.1 (``bert``)
and with ReforBERT's 0 (``bert-attn-dropout-0``). Attention dropout decides which SDPA kernel PyTorch
can use on CPU, so the second BERT row separates that setting from the rest of the implementation.
BERT goes through the engine by its documented ``model_factory`` argument, as a subclass that reports
its MLM and NSP losses apart (the same cross-entropies it computes itself).

It reports tokens/s and MFU of the best step after warm-up (the machine may be shared; the fastest
step is the one least disturbed), and the engine's overhead over the bare step. The bare step runs
first, then the engine, for every configuration. Two separate runs on a shared virtual machine differ
by several percent on their own, so the engine also times itself: "engine time on data" is the share
of its timed steps spent reading, masking and collating batches, the work the bare step does not do.
Targets: ReforBERT (full, bf16) at least 2x BERT fp32 and 1.3x BERT bf16 in tokens/s; the engine at most
5% slower than the bare step.

    python benchmarks/pretrain_throughput.py                      # 512 tokens, global batch 128
    python benchmarks/pretrain_throughput.py --steps 1 --global-batch-size 32 --models reforbert,bert

Writes benchmarks/results/pretrain_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reforbert.configuration_reforbert import CLS_ID, NUM_SPECIAL_TOKENS, SEP_ID, ReforBertConfig
from reforbert.fileio import atomic_file, sha256_of
from reforbert.flops import count_model_flops_per_token, default_peak_tflops
from reforbert.pretraining import pretrain

RESULTS = Path(__file__).resolve().parent / "results"


def make_vocab(folder: Path) -> Path:
    """A small real vocabulary folder: the engine checks the data's vocabulary fingerprint against it."""
    from reforbert.data.vocab import train_vocab

    corpus = folder / "corpus.txt"
    rng = np.random.default_rng(0)
    syllables = list("가나다라마바사아자차카타파하는을")
    lines = [" ".join("".join(rng.choice(syllables, size=3)) for _ in range(12)) for _ in range(300)]
    corpus.write_text("제목\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return train_vocab([corpus], folder / "vocab", vocab_size=60)


def make_shards(folder: Path, vocab_dir: Path, count: int, seq_len: int, vocab_size: int) -> Path:
    """``count`` random [CLS] A [SEP] B [SEP] instances of exactly ``seq_len`` tokens (no padding)."""
    from reforbert.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder)
    a_length = (seq_len - 3) // 2
    tokens = rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=(count, seq_len))
    tokens[:, 0] = CLS_ID
    tokens[:, a_length + 1] = SEP_ID
    tokens[:, -1] = SEP_ID
    writer.add(
        tokens.reshape(-1),
        np.full(count, seq_len),
        np.full(count, a_length + 2),
        rng.integers(0, 2, size=count),
    )
    writer.close(
        {
            "vocab_sha256": sha256_of(vocab_dir / "sentencepiece.model"),
            "vocab_size": vocab_size,
            "max_seq_len": seq_len,
        }
    )
    return folder


def bert_with_loss_parts_class() -> type:
    """``BertForPreTraining`` that also reports its MLM and NSP losses apart, as the pretraining loop's
    ``model_factory`` hook asks (the loop weights the MLM loss by each micro-batch's masked tokens)."""
    import torch.nn.functional as F
    from transformers import BertForPreTraining

    from reforbert.modeling_reforbert import ReforBertForPreTrainingOutput

    class BertForPreTrainingWithLossParts(BertForPreTraining):
        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            next_sentence_label: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> ReforBertForPreTrainingOutput:
            outputs = super().forward(
                input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
            )
            # The same cross-entropies BertForPreTraining computes itself when given labels.
            logits, nsp_logits = outputs.prediction_logits, outputs.seq_relationship_logits
            mlm_loss = nsp_loss = None
            if labels is not None:
                mlm_loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
            if next_sentence_label is not None:
                nsp_loss = F.cross_entropy(nsp_logits.view(-1, 2), next_sentence_label.view(-1))
            parts = [loss for loss in (mlm_loss, nsp_loss) if loss is not None]
            return ReforBertForPreTrainingOutput(
                loss=sum(parts) if parts else None,
                mlm_loss=mlm_loss,
                nsp_loss=nsp_loss,
                prediction_logits=logits,
                seq_relationship_logits=nsp_logits,
            )

    return BertForPreTrainingWithLossParts


def bert_factory(config: ReforBertConfig, attention_dropout: float = 0.1) -> torch.nn.Module:
    """Hugging Face BERT of ReforBERT's shape; its own defaults otherwise (attention dropout 0.1)."""
    from transformers import BertConfig

    return bert_with_loss_parts_class()(
        BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=0,
            attention_probs_dropout_prob=attention_dropout,
            attn_implementation="sdpa",
        )
    )


def bert_without_attention_dropout_factory(config: ReforBertConfig) -> torch.nn.Module:
    """BERT with ReforBERT's dropout settings (none on attention probabilities), which lets SDPA use
    its fused kernel: the comparison that isolates everything but that setting."""
    return bert_factory(config, attention_dropout=config.attention_probs_dropout_prob)


def reforbert_factory(config: ReforBertConfig) -> torch.nn.Module:
    from reforbert.modeling_reforbert import ReforBertForPreTraining

    return ReforBertForPreTraining(config)


def reforbert_ordinary_residuals_factory(config: ReforBertConfig) -> torch.nn.Module:
    """The same model with activations kept (reversible=False): faster, more memory."""
    from reforbert.modeling_reforbert import ReforBertForPreTraining

    return ReforBertForPreTraining(ReforBertConfig(**{**config.to_dict(), "reversible": False}))


FACTORIES = {
    "reforbert": reforbert_factory,
    "reforbert-norev": reforbert_ordinary_residuals_factory,
    "bert": bert_factory,
    "bert-attn-dropout-0": bert_without_attention_dropout_factory,
}
BERT_BASELINES = ("bert", "bert-attn-dropout-0")


def engine_timings(run_dir: Path, warmup: int) -> tuple[list[float], float]:
    """Tokens/s of each timed step and the share of their wall-clock the engine spent preparing batches."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "loss" in r and r["step"] > warmup]
    data_share = sum(r["data_seconds"] for r in timed) / sum(r["step_seconds"] for r in timed)
    return [r["step_tokens_per_s"] for r in timed], data_share


def bare_step_rates(
    model_name: str,
    config: ReforBertConfig,
    data: Path,
    precision: str,
    micro_batch_size: int,
    global_batch_size: int,
    warmup: int,
    steps: int,
) -> list[float]:
    """Tokens/s of each timed step of forward + backward over the accumulation micro-batches and AdamW,
    nothing else."""
    from reforbert.data.collator import PretrainingCollator
    from reforbert.data.shards import open_pretraining_data

    torch.manual_seed(0)
    model = FACTORIES[model_name](config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dataset = open_pretraining_data(data)
    collator = PretrainingCollator(config.vocab_size, seed=0, pad_to_multiple_of=8)
    batches = [
        collator([dataset[i] for i in range(start, start + micro_batch_size)])
        for start in range(0, global_batch_size, micro_batch_size)
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    durations = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        for batch in batches:
            with autocast:
                loss = model(**batch, return_dict=True).loss
            (loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            durations.append(time.perf_counter() - start)
    return [tokens / seconds for seconds in durations]


# Engine and bare step run the same model on the same batches; when they disagree by more than this,
# another job on the machine slowed one of them and the row says so.
DISTURBED_OVERHEAD = 0.5


def render_markdown(result: dict[str, Any]) -> str:
    settings, machine, rows = result["settings"], result["machine"], result["rows"]
    lines = [
        "# Pretraining throughput",
        "",
        f"Sequence length {settings['seq_len']}, global batch {settings['global_batch_size']} (micro-batch "
        f"{settings['micro_batch_size']}), best of {settings['steps']} timed step(s) after "
        f"{settings['warmup_steps']} warm-up step(s); torch {machine['torch']}, "
        f"{machine['threads']} threads, {machine['processor'] or machine['platform']}.",
        "",
        "| model | precision | engine tokens/s | bare step tokens/s | engine overhead | engine time on data "
        "| MFU (engine) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    disturbed = False
    for r in rows:
        mfu = f"{100 * r['engine_mfu']:.2f}%" if r["engine_mfu"] is not None else "n/a"
        # Results written before the engine timed its data work have no share.
        data_share = f"{100 * r['engine_data_share']:.1f}%" if "engine_data_share" in r else "n/a"
        flag = ""
        if abs(r["engine_overhead"]) > DISTURBED_OVERHEAD:
            flag, disturbed = " (disturbed)", True
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['engine_tokens_per_s']:,.0f} | "
            f"{r['bare_tokens_per_s']:,.0f} | {100 * r['engine_overhead']:+.1f}%{flag} | "
            f"{data_share} | {mfu} |"
        )
    lines += [
        "",
        f"1-minute load average {machine['load_average_before'][0]:.1f} before and "
        f"{machine['load_average_after'][0]:.1f} after, on {machine['cpus']} CPUs (the benchmark itself "
        f"keeps up to {machine['cpus']} busy; more means other jobs shared the machine and single runs "
        "can differ several-fold).",
        "",
        "MFU peaks: " + "; ".join(sorted({f"{r['precision']}: {r['peak_source']}" for r in rows})),
        "",
    ]
    variant = result.get("reforbert_bf16_variant", "reforbert")
    for name, target in result["reforbert_bf16_speedup"].items():
        lines.append(
            f"- ReforBERT ({variant}, full attention) bf16 {name.replace('_', ' ')}: {target['ratio']:.2f}x "
            f"(target {target['target']}x: {'met' if target['met'] else 'not met'})"
        )
    if disturbed:
        lines += [
            "",
            "Rows marked (disturbed) were slowed by other jobs in one of the two measurements; the verdicts "
            "above use the engine column and are no more reliable than those rows. Rerun on a quiet machine.",
        ]
    return "\n".join(lines) + "\n"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seq-len", type=int, default=512, help="Tokens per example (every example is full)."
    )
    parser.add_argument("--global-batch-size", type=int, default=128, help="Examples per optimizer step.")
    parser.add_argument(
        "--micro-batch-size", type=int, default=32, help="Examples per forward/backward pass."
    )
    parser.add_argument("--warmup-steps", type=int, default=1, help="Optimizer steps run before timing.")
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps timed after warm-up.")
    parser.add_argument("--precisions", default="fp32,bf16", help="Comma-separated precisions to measure.")
    parser.add_argument(
        "--models",
        default="reforbert,reforbert-norev,bert,bert-attn-dropout-0",
        help=f"Comma-separated models to measure, from {', '.join(FACTORIES)}.",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="Where the JSON and Markdown go.")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="Rewrite the Markdown from the JSON already in --output-dir.",
    )
    return parser.parse_args()


def measure(args: argparse.Namespace, config: ReforBertConfig) -> list[dict[str, Any]]:
    """One row per (model, precision): the engine and the bare step on the same synthetic shards."""
    total_steps = args.warmup_steps + args.steps
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        vocab = make_vocab(scratch)
        data = make_shards(
            scratch / "shards", vocab, args.global_batch_size * total_steps, args.seq_len, config.vocab_size
        )
        for model_name in args.models.split(","):
            # ``config`` describes every model's shape and attention (full), BERT's included.
            flops = count_model_flops_per_token(FACTORIES[model_name](config), config, args.seq_len)
            for precision in args.precisions.split(","):
                peak, peak_source = default_peak_tflops(torch.device("cpu"), precision)
                run_dir = scratch / f"{model_name}-{precision}"
                print(f"[{model_name} {precision}] bare step ...", file=sys.stderr, flush=True)
                bare_steps = bare_step_rates(
                    model_name,
                    config,
                    data,
                    precision,
                    args.micro_batch_size,
                    args.global_batch_size,
                    args.warmup_steps,
                    args.steps,
                )
                print(f"[{model_name} {precision}] engine ...", file=sys.stderr, flush=True)
                pretrain(
                    data,
                    vocab,
                    run_dir,
                    preset="mini",
                    # The same embedding size as the bare step, not the scratch vocabulary's.
                    config_overrides={"attention_backend": "full", "vocab_size": config.vocab_size},
                    max_seq_len=args.seq_len,
                    micro_batch_size=args.micro_batch_size,
                    global_batch_size=args.global_batch_size,
                    learning_rate=1e-4,
                    warmup_steps=0,
                    max_steps=total_steps,
                    save_steps=10**9,
                    eval_fraction=0.0,
                    precision=precision,
                    progress=False,
                    model_factory=FACTORIES[model_name],
                )
                engine_steps, data_share = engine_timings(run_dir, args.warmup_steps)
                # The best timed step: on a shared machine the fastest is the one least slowed by others.
                engine, bare = max(engine_steps), max(bare_steps)
                row = {
                    "model": model_name,
                    "precision": precision,
                    "engine_tokens_per_s": engine,
                    "bare_tokens_per_s": bare,
                    "engine_overhead": bare / engine - 1.0,
                    "engine_data_share": data_share,
                    "engine_step_tokens_per_s": engine_steps,
                    "bare_step_tokens_per_s": bare_steps,
                    "flops_per_token": flops,
                    "peak_tflops": peak,
                    "peak_source": peak_source,
                    "engine_mfu": engine * flops / (peak * 1e12) if peak else None,
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    return rows


def speedup_targets(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """ReforBERT bf16 against each BERT row, and which ReforBERT variant was the fastest."""

    def rate(model: str, precision: str) -> float | None:
        return next(
            (r["engine_tokens_per_s"] for r in rows if (r["model"], r["precision"]) == (model, precision)),
            None,
        )

    targets = {}
    # The targets are for ReforBERT's fastest configuration: exact attention, with or without reversible
    # layers (the variant used is recorded).
    variants = [(rate(m, "bf16"), m) for m in ("reforbert", "reforbert-norev") if rate(m, "bf16")]
    reforbert_bf16, reforbert_variant = max(variants) if variants else (None, None)
    for bert in BERT_BASELINES:
        for precision, goal in (("fp32", 2.0), ("bf16", 1.3)):
            baseline = rate(bert, precision)
            if reforbert_bf16 and baseline:
                ratio = reforbert_bf16 / baseline
                targets[f"vs_{bert}_{precision}"] = {"ratio": ratio, "target": goal, "met": ratio >= goal}
    return targets, reforbert_variant


def main() -> int:
    args = parse_arguments()
    if args.render_only:
        result = json.loads((args.output_dir / "pretrain_throughput.json").read_text(encoding="utf-8"))
        with atomic_file(args.output_dir / "pretrain_throughput.md", "w", encoding="utf-8") as handle:
            handle.write(render_markdown(result))
        return 0

    load_before = os.getloadavg()
    config = ReforBertConfig.from_preset("mini", attention_backend="full")
    rows = measure(args, config)
    targets, reforbert_variant = speedup_targets(rows)
    result = {
        "settings": {
            **vars(args),
            "output_dir": str(args.output_dir),
            "reforbert_config": {
                k: getattr(config, k)
                for k in (
                    "num_hidden_layers",
                    "hidden_size",
                    "num_attention_heads",
                    "intermediate_size",
                    "attention_backend",
                    "reversible",
                    "feed_forward_chunk_size",
                )
            },
        },
        "machine": {
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "rows": rows,
        "reforbert_bf16_speedup": targets,
        "reforbert_bf16_variant": reforbert_variant,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.output_dir / "pretrain_throughput.json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    markdown = render_markdown(result)
    with atomic_file(args.output_dir / "pretrain_throughput.md", "w", encoding="utf-8") as handle:
        handle.write(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
