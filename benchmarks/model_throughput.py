"""Training-step throughput and peak memory of ReforBERT and its peers across sequence lengths.

One command measures every configuration (model family x attention backend x reversible x dtype x
sequence length), each in its own child process: peak memory then belongs to that configuration
alone, and an out-of-memory crash or a hang is recorded for that configuration instead of ending
the run. A measured step is a full training step: forward, masked-LM loss on ~15% of positions,
backward and an AdamW update. Warm-up steps are excluded from the timing.

Outputs (written atomically, the JSON also after every configuration so an interrupted run keeps
what it measured): ``model_throughput.json`` (one record per configuration), ``model_throughput.md``
(tables) and ``model_throughput.png`` (tokens/s and peak memory against length, log-log).

    python benchmarks/model_throughput.py --quick --output-dir /tmp/bench
    python benchmarks/model_throughput.py --device cuda --output-dir "$OUT"

``--targets cpu`` (or ``gpu``) measures exactly the rows that ReforBERT's speed and memory goals are
stated in, and the Markdown then lists each goal with its measured ratio:

    python benchmarks/model_throughput.py --targets cpu --output-dir benchmarks/results/targets-cpu
    python benchmarks/model_throughput.py --targets gpu --output-dir "$OUT"
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULT_MARKER = "@@MODEL_THROUGHPUT_RESULT@@"
STEP_MARKER = "@@MODEL_THROUGHPUT_STEP@@"
OUTPUT_NAME = "model_throughput"

DEFAULT_LENGTHS = (512, 2048, 8192, 16384, 65536)
ALL_BACKENDS = ("lsh", "full", "auto")
ALL_PEERS = ("bert", "bert-attention-dropout-0", "reformer-pytorch", "hf-reformer", "hf-reformer-lsh")
PEER_FAMILIES = {
    "bert": "bert-sdpa",
    "bert-attention-dropout-0": "bert-sdpa (attention dropout 0)",
    "reformer-pytorch": "reformer-pytorch",
    "hf-reformer": "hf-reformer (lsh/local)",
    "hf-reformer-lsh": "hf-reformer (all lsh)",
}
# ReforBERT's exact-attention kernels (modeling_reforbert.ATTENTION_KERNELS["full"]); "flex" runs on CUDA.
FULL_KERNELS = ("sdpa", "flex")
ALL_DTYPES = ("fp32", "bf16")

# The "mini" shape shared by every model so that the comparison is about attention and memory
# layout, not model size; "base" only where a goal is stated for it (ReforBERT and BERT).
VOCAB_SIZE = 8007
SIZES = {"mini": (4, 256), "base": (12, 768)}  # layers, hidden; heads hidden / 64, feed-forward 4 x hidden
HIDDEN = 256
LAYERS = 4
HEADS = 4
INTERMEDIATE = 1024
BUCKET_SIZE = 64
NUM_HASHES = 4
MASK_ID = 6
FIRST_ORDINARY_ID = 7
MLM_PROBABILITY = 0.15
# ReforBertConfig's default: "auto" runs exact attention up to this length and LSH beyond.
REFORBERT_FULL_ATTENTION_MAX_LENGTH = 2048
# Beyond this length (where no peer is measured) ReforBERT trains its pretraining head, which projects
# only the masked positions onto the vocabulary, as `reforbert pretrain` does: a head over every position
# would hold 262,144 x 8,007 fp32 logits (8.4 GB) and as much again for their gradient.
MASKED_ROWS_ONLY_BEYOND = 65536


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One measured configuration; everything a child process needs to build and time it."""

    model: str  # "reforbert" or one of ALL_PEERS
    length: int
    batch_size: int
    dtype: str  # "fp32" or "bf16" (autocast)
    device: str
    backend: str | None = None  # ReforBERT attention_backend
    reversible: bool | None = None  # ReforBERT reversible residual layers
    warmup_steps: int = 2
    timed_steps: int = 3
    memory_limit_gb: float = 0.0  # address-space cap of the child on CPU; 0 = none
    full_kernel: str = "sdpa"  # ReforBERT exact-attention kernel, one of FULL_KERNELS
    size: str = "mini"  # one of SIZES; "base" for ReforBERT and BERT only
    timeout_s: float = 0.0  # this configuration's time limit; 0 = the run's --timeout

    @property
    def family(self) -> str:
        """Name of the line in the plot and the row in the tables (dtype excluded)."""
        if self.model == "reforbert":
            name = f"reforbert-{self.backend}-{'rev' if self.reversible else 'norev'}"
            if self.full_kernel != "sdpa" and self.backend != "lsh":
                name += f"-{self.full_kernel}"
        else:
            name = PEER_FAMILIES[self.model]
        return name if self.size == "mini" else f"{name} {self.size}"

    @property
    def heads(self) -> int:
        return SIZES[self.size][1] // 64

    @property
    def exact_attention(self) -> bool:
        """Whether this configuration computes exact (quadratic) attention over the whole length."""
        if self.model.startswith("bert"):
            return True
        if self.model == "reforbert":
            return self.backend == "full" or (
                self.backend == "auto" and self.length <= REFORBERT_FULL_ATTENTION_MAX_LENGTH
            )
        return False

    def dense_attention_gb(self) -> float:
        """Size of one layer's fp32 attention-score matrix (batch x heads x L x L)."""
        return self.batch_size * self.heads * self.length**2 * 4 / 1e9


def batch_size_for(length: int) -> int:
    # Batch 8 at 512 tokens, one sequence from 2,048 on: the long lengths are about one document.
    return 8 if length <= 512 else 1


def axial_shape(length: int) -> tuple[int, int]:
    """Two factors of ``length`` as close to its square root as possible (axial positions)."""
    first = int(math.isqrt(length))
    while length % first:
        first -= 1
    return first, length // first


# --------------------------------------------------------------------------------------------------
# Child process: build one model, time its training steps, print one result line.
# --------------------------------------------------------------------------------------------------


def build_model(config: BenchConfig):
    """The model for ``config`` and a function (model, input_ids, labels) -> loss."""
    import torch.nn.functional as F

    if config.model == "reforbert":
        from reforbert import modeling_reforbert
        from reforbert.configuration_reforbert import ReforBertConfig
        from reforbert.modeling_reforbert import ReforBertForMaskedLM, ReforBertForPreTraining

        modeling_reforbert.ATTENTION_KERNELS["full"] = config.full_kernel
        model_config = ReforBertConfig.from_preset(
            config.size,
            attention_backend=config.backend,
            reversible=config.reversible,
            lsh_bucket_size=BUCKET_SIZE,
            lsh_num_hashes=NUM_HASHES,
            axial_position_shape=axial_shape(config.length),
            full_attention_max_length=REFORBERT_FULL_ATTENTION_MAX_LENGTH,
        )
        if config.length > MASKED_ROWS_ONLY_BEYOND:
            return ReforBertForPreTraining(model_config), _hf_loss  # its loss is the MLM loss without NSP
        return ReforBertForMaskedLM(model_config), _hf_loss

    if config.model.startswith("bert"):
        from transformers import BertConfig, BertForMaskedLM

        layers, hidden = SIZES[config.size]
        model_config = BertConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            intermediate_size=4 * hidden,
            max_position_embeddings=config.length,
        )
        if config.model == "bert-attention-dropout-0":
            model_config.attention_probs_dropout_prob = 0.0  # ReforBERT's default
        model = BertForMaskedLM._from_config(model_config, attn_implementation="sdpa")
        if model.config._attn_implementation != "sdpa":
            raise RuntimeError(f"BERT runs {model.config._attn_implementation!r} attention, not sdpa")
        return model, _hf_loss

    if config.model == "reformer-pytorch":
        from reformer_pytorch import ReformerLM

        model = ReformerLM(
            num_tokens=VOCAB_SIZE,
            dim=HIDDEN,
            depth=LAYERS,
            heads=HEADS,
            dim_head=HIDDEN // HEADS,
            ff_mult=INTERMEDIATE // HIDDEN,
            max_seq_len=config.length,
            bucket_size=BUCKET_SIZE,
            n_hashes=NUM_HASHES,
            causal=False,
            axial_position_emb=True,
            axial_position_shape=axial_shape(config.length),
        )

        def loss_fn(model, input_ids, labels):
            logits = model(input_ids)
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1))

        return model, loss_fn

    if config.model in ("hf-reformer", "hf-reformer-lsh"):
        from transformers import ReformerConfig, ReformerForMaskedLM

        layers = ["lsh", "local"] * (LAYERS // 2) if config.model == "hf-reformer" else ["lsh"] * LAYERS
        model_config = ReformerConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=HIDDEN,
            num_attention_heads=HEADS,
            attention_head_size=HIDDEN // HEADS,
            feed_forward_size=INTERMEDIATE,
            hidden_act="gelu",
            attn_layers=layers,
            is_decoder=False,
            max_position_embeddings=config.length,
            axial_pos_embds=True,
            axial_pos_shape=axial_shape(config.length),
            axial_pos_embds_dim=(HIDDEN // 2, HIDDEN // 2),
            lsh_attn_chunk_length=BUCKET_SIZE,
            local_attn_chunk_length=BUCKET_SIZE,
            num_hashes=NUM_HASHES,
            # Average bucket size 64, as in the other LSH models.
            num_buckets=max(2, config.length // BUCKET_SIZE),
            pad_token_id=0,
        )
        return ReformerForMaskedLM(model_config), _hf_loss

    raise ValueError(f"unknown model {config.model!r}")


def _hf_loss(model, input_ids, labels):
    return model(input_ids=input_ids, labels=labels).loss


def masked_batch(config: BenchConfig, device):
    """Random ordinary tokens with ~15% of positions masked; labels are -100 elsewhere."""
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (config.batch_size, config.length)
    tokens = torch.randint(FIRST_ORDINARY_ID, VOCAB_SIZE, shape, generator=generator)
    masked = torch.rand(shape, generator=generator) < MLM_PROBABILITY
    masked[:, 0] = True  # at least one label per row, whatever the draw
    labels = torch.where(masked, tokens, torch.full_like(tokens, -100))
    inputs = torch.where(masked, torch.full_like(tokens, MASK_ID), tokens)
    return inputs.to(device), labels.to(device)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_child(config: BenchConfig, result: dict[str, Any]) -> None:
    """Measure ``config`` in this process, filling ``result`` as it goes (so a failure keeps the facts
    gathered before it)."""
    if config.device == "cpu" and config.memory_limit_gb > 0:
        # A failed allocation then raises inside torch (recorded as "oom") instead of the kernel's
        # out-of-memory killer picking some process on a shared machine.
        limit = int(config.memory_limit_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import torch

    result["device_name"] = device_name(config.device)
    result["torch_version"] = torch.__version__
    result["threads"] = torch.get_num_threads()
    torch.manual_seed(0)
    device = torch.device(config.device)
    model, loss_fn = build_model(config)
    model.to(device).train()
    result["parameters"] = sum(p.numel() for p in model.parameters())
    # Each weight of a linear layer costs 6 FLOPs per token in a training step (2 forward, 4 backward).
    result["linear_weights"] = sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids, labels = masked_batch(config, device)
    result["masked_positions"] = int((labels != -100).sum())
    result["rss_after_setup_mb"] = round(peak_rss_mb(), 1)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step_seconds: list[float] = []
    for step in range(config.warmup_steps + config.timed_steps):
        synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16"):
            loss = loss_fn(model, input_ids, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        seconds = time.perf_counter() - start
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {loss.item()} at step {step}")
        step_seconds.append(seconds)
        # Lets the parent report how far a run got when it is stopped for the time limit.
        step_report = {"step": step, "seconds": seconds, "peak_rss_mb": round(peak_rss_mb(), 1)}
        print(f"{STEP_MARKER} {json.dumps(step_report)}", flush=True)

    timed = step_seconds[config.warmup_steps :]
    result["step_seconds"] = [round(s, 4) for s in step_seconds]
    result["tokens_per_s"] = config.batch_size * config.length * len(timed) / sum(timed)
    result["loss"] = loss.item()
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["status"] = "ok"


def cuda_peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 1024**2, 1)


def child_main(spec: str) -> int:
    config = BenchConfig(**json.loads(spec))
    fields: dict[str, Any] = {}
    try:
        run_child(config, fields)
    except BaseException as error:  # every failure becomes a record, never a lost run
        if is_out_of_memory(error):
            fields.update(status="oom", error=_one_line(error))
        else:
            fields["status"] = f"error: {type(error).__name__}: {_one_line(error)}"
        fields["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if config.device == "cuda":
        fields["cuda_max_memory_allocated_mb"] = cuda_peak_mb()
    print(f"{RESULT_MARKER} {json.dumps(fields)}", flush=True)
    return 0


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text[:limit] + ("..." if len(text) > limit else "")


# --------------------------------------------------------------------------------------------------
# Parent process: build the matrix, run each configuration in a child, write the outputs.
# --------------------------------------------------------------------------------------------------


def build_matrix(
    *,
    lengths: Iterable[int],
    backends: Iterable[str],
    reversible: Iterable[bool],
    dtypes: Iterable[str],
    peers: Iterable[str],
    device: str,
    warmup_steps: int,
    timed_steps: int,
    memory_limit_gb: float,
) -> list[BenchConfig]:
    """All configurations, in the order of ``lengths``: give the most important length first if
    ``--total-budget`` may cut the run short."""
    common = dict(
        device=device, warmup_steps=warmup_steps, timed_steps=timed_steps, memory_limit_gb=memory_limit_gb
    )
    configs = []
    for length in lengths:
        for dtype in dtypes:
            for backend in backends:
                for rev in reversible:
                    configs.append(
                        BenchConfig(
                            model="reforbert",
                            length=length,
                            batch_size=batch_size_for(length),
                            dtype=dtype,
                            backend=backend,
                            reversible=rev,
                            **common,
                        )
                    )
            for peer in peers:
                configs.append(
                    BenchConfig(
                        model=peer, length=length, batch_size=batch_size_for(length), dtype=dtype, **common
                    )
                )
    return configs


@dataclasses.dataclass(frozen=True)
class Target:
    """A stated goal: ReforBERT's ``ours`` row against the fastest of ``peers`` at one length."""

    ours: str  # family
    peers: tuple[str, ...]  # families
    length: int
    dtype: str
    minimum_ratio: float | None  # tokens/s of ours over the fastest peer; None: report only
    memory_no_higher: bool = False  # peak memory of ours at most the lowest of the peers'
    memory_at_most_gb: float | None = None  # peak memory of ours at most this


LSH_REV, FULL_NOREV, FULL_FLEX_NOREV = (
    "reforbert-lsh-rev",
    "reforbert-full-norev",
    "reforbert-full-norev-flex",
)
BERT, BERT_NO_ATTENTION_DROPOUT = PEER_FAMILIES["bert"], PEER_FAMILIES["bert-attention-dropout-0"]
HF_REFORMER = PEER_FAMILIES["hf-reformer"]
REFORMERS = (PEER_FAMILIES["reformer-pytorch"], HF_REFORMER)
TARGETS = {
    "cpu": [
        Target(FULL_NOREV, (BERT_NO_ATTENTION_DROPOUT,), 512, "fp32", 1.3),
        Target(FULL_NOREV, (BERT,), 512, "fp32", None),
        *(Target(LSH_REV, REFORMERS, length, "fp32", 1.5, True) for length in (8192, 16384, 65536)),
        Target(LSH_REV, (), 131072, "fp32", None),
        Target(LSH_REV, (), 262144, "fp32", None, memory_at_most_gb=20.0),
    ],
    # In the order they run: GPU time is often short, and a time budget that runs out leaves the last
    # configurations unmeasured, so the quick and most asked-for rows come first and 262,144 tokens last.
    "gpu": [
        *(
            Target(ours, (BERT_NO_ATTENTION_DROPOUT,), 512, "bf16", 1.0)
            for ours in (FULL_NOREV, FULL_FLEX_NOREV)
        ),
        Target(f"{FULL_NOREV} base", (), 512, "bf16", None),
        Target(f"{FULL_FLEX_NOREV} base", (), 512, "bf16", None),
        # The seed's BERT-Base needed more than 12 GB; reversible layers should fit it in 8 at batch 8.
        Target("reforbert-full-rev base", (), 512, "bf16", None, memory_at_most_gb=8.0),
        Target(LSH_REV, (HF_REFORMER,), 65536, "bf16", 1.0),
        *(
            Target(ours, (BERT_NO_ATTENTION_DROPOUT,), 8192, "bf16", 1.0)
            for ours in (FULL_NOREV, FULL_FLEX_NOREV)
        ),
        *(
            Target(ours, (BERT_NO_ATTENTION_DROPOUT,), 65536, "bf16", None, True)
            for ours in (FULL_NOREV, FULL_FLEX_NOREV)
        ),
        Target(LSH_REV, (BERT_NO_ATTENTION_DROPOUT,), 262144, "bf16", 2.0),
    ],
}
# The slowest rate a target configuration is given time for: long sequences get long time limits.
TARGET_MINIMUM_TOKENS_PER_S = {"cpu": 100.0, "gpu": 1000.0}
TARGET_STARTUP_S = 120.0  # imports, model construction and (for FlexAttention) compilation
# Address-space cap of CPU children beyond 65,536 tokens: the goal there is 20 GB of peak RSS.
LONG_CONTEXT_MEMORY_LIMIT_GB = 23.0


def target_matrix(
    host: str, warmup_steps: int, timed_steps: int, memory_limit_gb: float, timeout_s: float
) -> list[BenchConfig]:
    """The configurations that the goals of ``host`` ("cpu" or "gpu") compare, one each."""
    device = "cuda" if host == "gpu" else "cpu"
    families: dict[tuple[str, int, str], None] = {}
    for target in TARGETS[host]:
        for family in (target.ours, *target.peers):
            families.setdefault((family, target.length, target.dtype), None)
    configs = []
    peer_models = {family: model for model, family in PEER_FAMILIES.items()}
    for family, length, dtype in families:
        size = "base" if family.endswith(" base") else "mini"
        name = family.removesuffix(" base")
        fields: dict[str, Any]
        if name.startswith("reforbert-"):
            _, backend, rev, *kernel = name.split("-")
            fields = dict(model="reforbert", backend=backend, reversible=rev == "rev")
            fields["full_kernel"] = kernel[0] if kernel else "sdpa"
        else:
            fields = dict(model=peer_models[name])
        batch_size = batch_size_for(length)
        # One warm-up and one timed step beyond 16,384 tokens, where a step takes minutes on a CPU.
        steps = (1, 1) if length > 16384 else (warmup_steps, timed_steps)
        if device == "cuda":
            memory_limit = 0.0
        elif length > 65536:
            memory_limit = max(memory_limit_gb, LONG_CONTEXT_MEMORY_LIMIT_GB)
        else:
            memory_limit = memory_limit_gb
        slowest_run_s = sum(steps) * batch_size * length / TARGET_MINIMUM_TOKENS_PER_S[host]
        configs.append(
            BenchConfig(
                length=length,
                batch_size=batch_size,
                dtype=dtype,
                device=device,
                size=size,
                warmup_steps=steps[0],
                timed_steps=steps[1],
                memory_limit_gb=memory_limit,
                timeout_s=max(timeout_s, TARGET_STARTUP_S + slowest_run_s),
                **fields,
            )
        )
    return configs


def run_in_child(config: BenchConfig, timeout_s: float) -> dict[str, Any]:
    """Run one configuration in a fresh Python process and turn whatever happens into fields."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-spec",
        json.dumps(dataclasses.asdict(config)),
    ]
    started = time.perf_counter()
    # A new session lets a timed-out child be killed together with any processes it started.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    fields: dict[str, Any] = {"wall_seconds": round(time.perf_counter() - started, 1)}
    steps = [
        json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith(STEP_MARKER)
    ]
    results = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if timed_out:
        fields["status"] = "timeout"
        fields["timeout_s"] = timeout_s
        fields["finished_step_seconds"] = [round(step["seconds"], 3) for step in steps]
        if steps:
            # Memory of the steps that did finish: a lower bound of the configuration's peak.
            fields["peak_rss_mb_of_finished_steps"] = steps[-1]["peak_rss_mb"]
    elif results:
        fields.update(json.loads(results[-1].split(" ", 1)[1]))
    elif process.returncode == -signal.SIGKILL:
        # Nothing printed and killed outright: on Linux that is the kernel's out-of-memory killer.
        fields["status"] = "oom"
        fields["error"] = "killed by SIGKILL (the kernel's out-of-memory killer)"
    else:
        last = (stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1]
        fields["status"] = f"error: {last[:300]}"
    return fields


class BenchmarkArgumentError(ValueError):
    """A bad command-line value; reported as one line with exit status 2."""


def parse_list(text: str, allowed: Iterable[str] | None, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if items == ["none"]:
        return []
    if allowed is not None:
        allowed = list(allowed)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise BenchmarkArgumentError(
                f"--{what}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)} or none"
            )
    return items


def parse_lengths(text: str) -> list[int]:
    lengths = []
    for item in parse_list(text, None, "lengths"):
        if not item.isdigit() or int(item) <= 0 or int(item) % (2 * BUCKET_SIZE):
            # LSH models sort into buckets of 64 and attend to the neighbouring bucket: pairs of buckets.
            raise BenchmarkArgumentError(
                f"--lengths: {item!r} is not a positive multiple of {2 * BUCKET_SIZE}"
            )
        lengths.append(int(item))
    return lengths


def parse_reversible(text: str) -> list[bool]:
    return [item == "on" for item in parse_list(text, ("on", "off"), "reversible")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Training-step tokens/s and peak memory of ReforBERT and peers; one child process per "
        "configuration."
    )
    parser.add_argument("--lengths", help=f"comma-separated sequence lengths (default {DEFAULT_LENGTHS})")
    parser.add_argument(
        "--backends", help="ReforBERT attention backends: lsh,full,auto or none (default all)"
    )
    parser.add_argument("--reversible", help="ReforBERT reversible layers: on,off (default both)")
    parser.add_argument("--dtypes", help="fp32,bf16 (bf16 = bfloat16 autocast; default both)")
    parser.add_argument("--peers", help=f"{','.join(ALL_PEERS)} or none (default all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--timeout", type=float, help="seconds per configuration (default 120 on cpu, 60 on cuda)"
    )
    parser.add_argument("--steps", type=int, help="timed training steps per configuration (default 3)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up steps per configuration (default 2)")
    parser.add_argument(
        "--total-budget",
        type=float,
        default=0.0,
        help="seconds for the whole run; configurations not started in time are recorded as "
        "'not run' (default 0 = no limit)",
    )
    parser.add_argument(
        "--max-dense-gb",
        type=float,
        default=20.0,
        help="on cpu, skip exact-attention configurations whose batch x heads x L x L fp32 score "
        "matrix exceeds this many GB (default 20)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=12.0,
        help="on cpu, address-space cap of each child; allocations beyond it fail and are "
        "recorded as oom (default 12; 0 = none)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results in --output-dir")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fast subset: length 512, fp32, lsh and full, reversible on, all peers, 1+1 steps",
    )
    parser.add_argument(
        "--targets",
        choices=tuple(TARGETS),
        help="measure the configurations that ReforBERT's speed and memory goals compare on this host kind "
        "(cpu: fp32 on the CPU; gpu: bf16 on CUDA) and list each goal with its measured ratio; the "
        "matrix options are then ignored, --warmup, --steps, --timeout and --memory-limit-gb still apply",
    )
    parser.add_argument(
        "--full-kernel",
        choices=FULL_KERNELS,
        default="sdpa",
        help="ReforBERT exact-attention kernel for the matrix runs: sdpa (dense mask) or flex "
        "(FlexAttention, CUDA only) (default sdpa)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak dense TFLOP/s at the measured precision; when given, the Markdown reports "
        "model FLOP utilisation (6 FLOPs per linear weight per token, plus exact attention's scores)",
    )
    parser.add_argument("--child-spec", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child_spec:
        return child_main(args.child_spec)
    try:
        return run_benchmark(args, argv)
    except BenchmarkArgumentError as error:
        print(f"model_throughput.py: {error}", file=sys.stderr)
        return 2


def run_benchmark(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Run every configuration the arguments select and write the JSON, Markdown and PNG outputs."""

    quick = args.quick
    lengths = parse_lengths(args.lengths or ("512" if quick else ",".join(map(str, DEFAULT_LENGTHS))))
    backends = parse_list(
        args.backends or ("lsh,full" if quick else ",".join(ALL_BACKENDS)), ALL_BACKENDS, "backends"
    )
    reversible = parse_reversible(args.reversible or ("on" if quick else "on,off"))
    dtypes = parse_list(args.dtypes or ("fp32" if quick else ",".join(ALL_DTYPES)), ALL_DTYPES, "dtypes")
    peers = parse_list(args.peers or ",".join(ALL_PEERS), ALL_PEERS, "peers")
    timed_steps = args.steps if args.steps is not None else (1 if quick else 3)
    warmup_steps = args.warmup if args.warmup is not None else (1 if quick else 2)
    timeout_s = args.timeout if args.timeout is not None else (120.0 if args.device == "cpu" else 60.0)
    if timed_steps < 1 or warmup_steps < 0 or timeout_s <= 0:
        raise BenchmarkArgumentError("--steps must be >= 1, --warmup >= 0 and --timeout > 0")

    if args.targets:
        args.device = "cuda" if args.targets == "gpu" else "cpu"
    elif args.full_kernel == "flex" and args.device != "cuda":
        raise BenchmarkArgumentError(
            "--full-kernel flex: FlexAttention trains on CUDA only; add --device cuda"
        )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BenchmarkArgumentError(f"--device cuda: torch {torch.__version__} sees no CUDA device")

    outputs = {suffix: args.output_dir / f"{OUTPUT_NAME}.{suffix}" for suffix in ("json", "md", "png")}
    existing = [str(path) for path in outputs.values() if path.exists()]
    if existing and not args.overwrite:
        print(f"{existing[0]}: already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2

    if args.targets:
        configs = target_matrix(args.targets, warmup_steps, timed_steps, args.memory_limit_gb, timeout_s)
    else:
        configs = build_matrix(
            lengths=lengths,
            backends=backends,
            reversible=reversible,
            dtypes=dtypes,
            peers=peers,
            device=args.device,
            warmup_steps=warmup_steps,
            timed_steps=timed_steps,
            memory_limit_gb=args.memory_limit_gb if args.device == "cpu" else 0.0,
        )
        configs = [dataclasses.replace(config, full_kernel=args.full_kernel) for config in configs]
    if not configs:
        raise BenchmarkArgumentError("nothing to measure: every list is empty")

    from tqdm import tqdm

    run_info = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "per_configuration_timeout_s": timeout_s,
        "total_budget_s": args.total_budget,
        "max_dense_gb": args.max_dense_gb,
        "memory_limit_gb": args.memory_limit_gb if args.device == "cpu" else None,
        "nice": os.nice(0),
        # Ties the numbers to the exact model code that produced them.
        "reforbert_modeling_sha256": modeling_source_digest(),
        "targets": args.targets,
        "peak_tflops": args.peak_tflops,
        # glibc's allocator settings change throughput and memory (README); the children inherit them.
        "allocator_environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }
    records: list[dict[str, Any]] = []
    run_started = time.perf_counter()
    progress = tqdm(configs, desc="configurations", unit="config")
    for config in progress:
        progress.set_postfix_str(f"{config.family} {config.dtype} L={config.length}")
        record: dict[str, Any] = {"family": config.family, **dataclasses.asdict(config)}
        record["exact_attention"] = config.exact_attention
        if config.exact_attention:
            record["dense_attention_gb"] = round(config.dense_attention_gb(), 2)
        spent = time.perf_counter() - run_started
        if (
            args.device == "cpu"
            and config.exact_attention
            and config.dense_attention_gb() > args.max_dense_gb
        ):
            record["status"] = (
                f"skipped: would need {config.dense_attention_gb():.1f} GB for the dense attention matrix"
            )
        elif args.total_budget and spent > args.total_budget:
            record["status"] = f"not run: total time budget of {args.total_budget:.0f} s spent"
        else:
            record.update(run_in_child(config, config.timeout_s or timeout_s))
        records.append(record)
        tqdm.write(summary_line(record))
        write_json(outputs["json"], run_info, records, complete=False)

    write_json(outputs["json"], run_info, records, complete=True)
    write_markdown(outputs["md"], run_info, records)
    write_plot(outputs["png"], records)
    print(f"wrote {', '.join(str(path) for path in outputs.values())}")
    return 0


def modeling_source_digest() -> str | None:
    import importlib.util

    from reforbert.fileio import sha256_of

    try:
        spec = importlib.util.find_spec("reforbert.modeling_reforbert")
    except ImportError:
        return None
    return sha256_of(spec.origin) if spec and spec.origin else None


def summary_line(record: dict[str, Any]) -> str:
    text = f"{record['family']:<26} {record['dtype']:<5} L={record['length']:<6} {record['status']}"
    if record["status"] == "ok":
        text += f"  {record['tokens_per_s']:.0f} tokens/s  peak {peak_memory_mb(record):.0f} MB"
    return text


def peak_memory_mb(record: dict[str, Any]) -> float | None:
    """GPU memory on cuda, the child's peak resident set on cpu."""
    if record.get("device") == "cuda":
        return record.get("cuda_max_memory_allocated_mb")
    return record.get("peak_rss_mb")


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


def write_json(path: Path, run_info: dict[str, Any], records: list[dict[str, Any]], complete: bool) -> None:
    from reforbert.fileio import atomic_file

    device_names = sorted({r["device_name"] for r in records if r.get("device_name")})
    torch_versions = sorted({r["torch_version"] for r in records if r.get("torch_version")})
    document = {
        **run_info,
        "complete": complete,
        "device_names": device_names,
        "torch_versions": torch_versions,
        "records": records,
    }
    with atomic_file(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")
    _make_readable(path)


def _rows(records: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[int]]:
    rows = list(dict.fromkeys((r["family"], r["dtype"]) for r in records))
    lengths = sorted({r["length"] for r in records})
    return rows, lengths


def _cell(record: dict[str, Any] | None, value: str) -> str:
    if record is None:
        return ""
    if record["status"] == "ok":
        return value
    status = record["status"]
    if status == "timeout":
        finished = record.get("finished_step_seconds") or []
        return f"timeout ({len(finished)} steps done)" if finished else "timeout"
    if status.startswith("error"):
        return "error (see below)"
    if status.startswith("skipped"):
        return f"skipped ({record['dense_attention_gb']:.1f} GB matrix)"
    if status.startswith("not run"):
        return "not run"
    return status.replace("|", "/")


def _failure_detail(record: dict[str, Any]) -> str:
    """One line saying what happened to a configuration that produced no measurement."""
    status = record["status"]
    if status == "timeout":
        finished = record.get("finished_step_seconds") or []
        detail = f"timeout after {record['timeout_s']:.0f} s"
        if finished:
            detail += f"; finished steps took {', '.join(f'{s:.1f}' for s in finished)} s"
            detail += f", peak RSS {record['peak_rss_mb_of_finished_steps']:,.0f} MB by then"
        else:
            detail += " before the first step finished"
        return detail
    if status == "oom" and record.get("error"):
        return f"oom: {record['error']}"
    return status


def allocator_lines(environment: dict[str, str]) -> list[str]:
    """The header line naming the glibc allocator settings a run had, if any (none: glibc's defaults)."""
    if not environment:
        return []
    settings = " ".join(f"{name}={value}" for name, value in environment.items())
    return [f"Allocator environment (inherited by every child): `{settings}`."]


def write_markdown(path: Path, run_info: dict[str, Any], records: list[dict[str, Any]]) -> None:
    from reforbert.fileio import atomic_file

    rows, lengths = _rows(records)
    by_key = {(r["family"], r["dtype"], r["length"]): r for r in records}
    devices = sorted({r["device_name"] for r in records if r.get("device_name")})
    torch_versions = sorted({r["torch_version"] for r in records if r.get("torch_version")})
    threads = sorted({r["threads"] for r in records if r.get("threads")})
    memory_label = (
        "torch.cuda.max_memory_allocated" if run_info["device"] == "cuda" else "peak RSS of the child"
    )
    header = (
        "| configuration | dtype | " + " | ".join(f"L={n} (b={batch_size_for(n)})" for n in lengths) + " |"
    )
    rule = "|---|---|" + "---:|" * len(lengths)

    lines = [
        "# Model training-step throughput",
        "",
        f"Command: `{run_info['command']}`, started {run_info['started_utc']}.",
        f"Device: {', '.join(devices) or run_info['device']}; torch {', '.join(torch_versions)}; "
        f"torch threads {', '.join(map(str, threads))}.",
        f"Per-configuration time limit {run_info['per_configuration_timeout_s']:.0f} s"
        + (
            f"; child address-space cap {run_info['memory_limit_gb']:g} GB"
            if run_info.get("memory_limit_gb")
            else ""
        )
        + ". One training step = forward + masked-LM loss (~15% of positions) + backward + AdamW; the "
        f"vocabulary projection covers every position up to {MASKED_ROWS_ONLY_BEYOND:,} tokens and only the "
        "masked ones beyond (ReforBERT's pretraining head, no peer runs there).",
        f"ReforBERT model code: modeling_reforbert.py sha256 {run_info.get('reforbert_modeling_sha256')}.",
        *allocator_lines(run_info.get("allocator_environment") or {}),
        "",
        "## Tokens per second (training step)",
        "",
        header,
        rule,
    ]
    for family, dtype in rows:
        cells = []
        for n in lengths:
            record = by_key.get((family, dtype, n))
            speed = record.get("tokens_per_s") if record else None
            cells.append(_cell(record, f"{speed:,.0f}" if speed is not None else ""))
        lines.append(f"| {family} | {dtype} | " + " | ".join(cells) + " |")
    lines += ["", f"## Peak memory, MB ({memory_label})", "", header, rule]
    for family, dtype in rows:
        cells = []
        for n in lengths:
            record = by_key.get((family, dtype, n))
            memory = peak_memory_mb(record) if record else None
            cells.append(_cell(record, f"{memory:,.0f}" if memory is not None else ""))
        lines.append(f"| {family} | {dtype} | " + " | ".join(cells) + " |")
    if run_info.get("peak_tflops"):
        lines += mfu_lines(records, run_info["peak_tflops"])
    if run_info.get("targets"):
        lines += goal_lines(TARGETS[run_info["targets"]], by_key)
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        lines += ["", "## Configurations without a measurement", ""]
        for record in failed:
            lines.append(
                f"- {record['family']} {record['dtype']} L={record['length']}: {_failure_detail(record)}"
            )
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    _make_readable(path)


def training_flops_per_token(record: dict[str, Any]) -> float:
    """6 FLOPs per linear weight (forward 2, backward 4), plus exact attention's two L x L products."""
    layers, hidden = SIZES[record.get("size", "mini")]
    attention = 12 * layers * hidden * record["length"] if record["exact_attention"] else 0
    return 6 * record["linear_weights"] + attention


def mfu_lines(records: list[dict[str, Any]], peak_tflops: float) -> list[str]:
    lines = ["", f"## Model FLOP utilisation (peak {peak_tflops:g} TFLOP/s as given)", ""]
    for record in records:
        if record["status"] == "ok" and "linear_weights" in record:
            flops = training_flops_per_token(record)
            utilisation = record["tokens_per_s"] * flops / (peak_tflops * 1e12)
            lines.append(
                f"- {record['family']} {record['dtype']} L={record['length']}: {flops / 1e9:.2f} GFLOP per "
                f"token, MFU {100 * utilisation:.1f}%"
                + ("" if record["exact_attention"] else " (LSH attention not counted)")
            )
    return lines


def goal_lines(targets: list[Target], by_key: dict[tuple[str, str, int], dict[str, Any]]) -> list[str]:
    """One line per goal: the measured rate and memory, the ratio to the fastest peer, met or missed."""

    def measured(family: str, target: Target) -> dict[str, Any] | None:
        record = by_key.get((family, target.dtype, target.length))
        return record if record is not None and record["status"] == "ok" else None

    lines = ["", "## Goals", ""]
    for target in targets:
        line = f"- {target.ours} {target.dtype} L={target.length}"
        ours = measured(target.ours, target)
        if ours is None:
            lines.append(line + ": no measurement (see below)")
            continue
        our_memory = peak_memory_mb(ours) or 0.0
        line += f": {ours['tokens_per_s']:,.0f} tokens/s, peak {our_memory:,.0f} MB"
        if target.memory_at_most_gb is not None:
            met = our_memory <= target.memory_at_most_gb * 1024
            line += f" (goal at most {target.memory_at_most_gb:g} GB: {'met' if met else 'missed'})"
        peers = [record for family in target.peers if (record := measured(family, target))]
        if target.peers and not peers:
            line += "; no peer measured"
        elif peers:
            fastest = max(peers, key=lambda record: record["tokens_per_s"])
            ratio = ours["tokens_per_s"] / fastest["tokens_per_s"]
            line += f"; {ratio:.2f}x {fastest['family']} ({fastest['tokens_per_s']:,.0f} tokens/s)"
            if target.minimum_ratio is not None:
                met = ratio >= target.minimum_ratio
                line += f", goal at least {target.minimum_ratio:g}x: {'met' if met else 'missed'}"
            if target.memory_no_higher:
                lowest = min(peak_memory_mb(record) or 0.0 for record in peers)
                met = our_memory <= lowest
                line += f"; memory goal at most {lowest:,.0f} MB (lowest peer): {'met' if met else 'missed'}"
            if len(peers) < len(target.peers):
                line += " (not every peer measured)"
        lines.append(line)
    return lines


def write_plot(path: Path, records: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reforbert.fileio import atomic_file

    rows, _ = _rows(records)
    families = list(dict.fromkeys(family for family, _ in rows))
    colours = {family: plt.cm.tab10(i % 10) for i, family in enumerate(families)}
    figure, (speed_axis, memory_axis) = plt.subplots(1, 2, figsize=(14, 6))
    for family, dtype in rows:
        ok = sorted(
            (r for r in records if r["family"] == family and r["dtype"] == dtype and r["status"] == "ok"),
            key=lambda r: r["length"],
        )
        if not ok:
            continue
        style = dict(
            color=colours[family], linestyle="-" if dtype == "fp32" else "--", marker="o", markersize=4
        )
        label = f"{family} {dtype}"
        speed_axis.plot([r["length"] for r in ok], [r["tokens_per_s"] for r in ok], label=label, **style)
        memory_axis.plot([r["length"] for r in ok], [peak_memory_mb(r) for r in ok], label=label, **style)
    for axis, title in ((speed_axis, "training tokens/s"), (memory_axis, "peak memory (MB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    if memory_axis.get_legend_handles_labels()[0]:
        memory_axis.legend(fontsize=7, loc="upper left", ncol=1)
    figure.suptitle(
        "Training step (forward, backward, AdamW); failed configurations are absent, see the table"
    )
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    _make_readable(path)


def _make_readable(path: Path) -> None:
    # Temporary files are created private (0600); results are meant to be shared.
    path.chmod(0o644)


if __name__ == "__main__":
    sys.exit(main())
