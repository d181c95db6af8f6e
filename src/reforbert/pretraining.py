"""``reforbert pretrain``: masked-language-model + next-sentence pretraining of ReforBertForPreTraining.

The loop is written out here and runs on Hugging Face Accelerate, which supplies process groups
(``torchrun`` / ``accelerate launch``, NCCL on GPUs, gloo on CPUs), DistributedDataParallel with
``no_sync`` during gradient accumulation, bf16/fp16 autocast with fp16 loss scaling, gradient
clipping through the scaler, and optional ``torch.compile``. A hand-written loop (rather than the
Trainer) is what makes the guarantees below cheap to keep:

* Exact resume. The data order is a seeded permutation per epoch, each optimizer step takes the
  next ``global_batch_size`` indices whatever the number of processes, masking is seeded per
  (seed, epoch, example) by the collator, and dropout / LSH hashing are reseeded per micro-batch
  from (seed, step, micro-batch). A run killed at any step and resumed from its last checkpoint
  therefore logs the same losses and ends with the same weights as an uninterrupted one, and one
  process with accumulation matches several processes at the same global batch.
* Batches that pad little, a loss that ignores the layout. Each global batch is sorted by length
  before it is cut into micro-batches (global micro-batch m runs on process m % world), and the MLM
  loss is weighted so that it is the mean over every masked token of the global batch: the micro-batch
  size and the number of processes change the arithmetic's order, not the result.
* Safe checkpoints. ``checkpoints/step-N/`` is written under a temporary name and renamed when
  complete; every file is safetensors or JSON, so resuming never unpickles anything.

Several GPUs or nodes: launch the same command under ``torchrun`` (or ``accelerate launch``), e.g.
``torchrun --nproc-per-node 8 -m reforbert.cli pretrain --data D --vocab V --output RUN``; the
micro-batches of each global batch are spread over the processes and accumulation shrinks to match.

Checkpoint folder ``RUN/checkpoints/step-N/``:
  ``model.safetensors`` + ``config.json``  model weights and config;
  ``optimizer.safetensors``                 AdamW moments and step counts, keyed ``state.<param>.<name>``;
  ``rng.safetensors``                       torch CPU (and CUDA) generator states;
  ``trainer_state.json``                    step, data position, tokens seen, scheduler, loss scaler,
                                            optimizer param groups, and the settings that must not change.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from reforbert.configuration_reforbert import MASK_ID, PRESETS, ReforBertConfig
from reforbert.data.shards import VOCAB_MODEL_FILE
from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_directory, atomic_file

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
CHECKPOINT_FILES = (
    "model.safetensors",
    "config.json",
    "optimizer.safetensors",
    "rng.safetensors",
    "trainer_state.json",
)
# What a run folder holds; --overwrite removes exactly these and nothing else the user put there.
RUN_ENTRIES = ("checkpoints", "model", "metrics.jsonl", "tensorboard", "run_settings.json", "curves.png")
# Settings that fix the data order and the loss; changing them on --resume would silently change the run.
RESUME_INVARIANTS = ("global_batch_size", "seed", "mlm_probability", "nsp", "max_seq_len", "data")

MEMORY_LEVERS = """\
Ways to reduce memory, roughly from most to least effective:
  --reversible             reversible residual layers keep one layer's activations instead of all of them;
  --ff-chunk-size N        run the feed-forward layer over N positions at a time (e.g. 64 or 128);
  --micro-batch-size N     a smaller micro-batch; --global-batch-size stays the same through accumulation;
  --attention lsh          LSH attention instead of full attention for long sequences
                           (with a smaller --bucket-size or fewer --num-hashes);
  --precision bf16         half-precision activations on hardware that supports them."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left in place."""


class PretrainingOutOfMemory(RuntimeError):
    """The device ran out of memory; the message lists the settings that reduce memory."""


@dataclasses.dataclass
class TrainingState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # index into this epoch's permutation where the next global batch starts
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------
# Throughput accounting


def count_model_flops_per_token(model: torch.nn.Module, config: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (parameters outside the embedding tables) + attention.

    Embedding lookups cost no multiplications, so their tables are left out. Attention adds, per
    layer, 2 matmuls (scores and weighted sum) of 2 x hidden FLOPs per attended key, times 3 for
    forward + backward: 12 x hidden x keys. Full attention attends to ``seq_len`` keys; LSH attention
    to its own chunk and the chunks on both sides (up to 3 x bucket size) in each of ``lsh_num_hashes``
    rounds.
    Recomputation by reversible layers is not counted: these are model FLOPs, not hardware FLOPs.
    """
    embedding_params = sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Embedding)
    )
    params = sum(p.numel() for p in model.parameters()) - embedding_params
    return 6.0 * params + 12.0 * config.num_hidden_layers * config.hidden_size * attended_keys(
        config, seq_len
    )


def attended_keys(config: Any, seq_len: int) -> float:
    backend = getattr(config, "attention_backend", "full")
    if backend == "auto":
        backend = "full" if seq_len <= config.full_attention_max_length else "lsh"
    if backend == "lsh":
        chunks = max(1, math.ceil(seq_len / config.lsh_bucket_size))
        return float(min(chunks, 3) * config.lsh_bucket_size * config.lsh_num_hashes)
    return float(seq_len)


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
    flags, mhz = _cpu_flags_and_mhz()
    if mhz is None:
        return None, "CPU clock unknown; pass --peak-tflops"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if precision == "bf16" and "amx_bf16" in flags:
        per_cycle, unit = 2048, "AMX bf16"
    elif precision == "bf16" and "avx512_bf16" in flags:
        per_cycle, unit = 128, "AVX-512 bf16"
    elif "avx512f" in flags:
        per_cycle, unit = 64, "AVX-512 fp32 FMA"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, unit = 32, "AVX2 fp32 FMA"
    else:
        per_cycle, unit = 8, "SSE fp32"
    peak = cores * mhz * 1e6 * per_cycle / 1e12
    return peak, f"CPU estimate: {cores} cores x {mhz:.0f} MHz x {per_cycle} FLOPs/cycle ({unit})"


def _cpu_flags_and_mhz() -> tuple[set[str], float | None]:
    flags: set[str] = set()
    mhz: float | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "cpu MHz" and mhz is None:
                mhz = float(value)
    with contextlib.suppress(OSError, ValueError):
        mhz = float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    return flags, mhz


# ---------------------------------------------------------------------------------------------------
# Data order


class GlobalBatchOrder:
    """Which examples each optimizer step sees: a seeded permutation per epoch, cut into global batches.

    The order depends only on (seed, epoch), never on the number of processes, so a resumed run or a
    run on more processes continues the same sequence. An epoch's tail that cannot fill a global
    batch is skipped (the next epoch's permutation covers those examples in a different order).
    """

    def __init__(self, train_indices: Sequence[int], global_batch_size: int, seed: int) -> None:
        if len(train_indices) < global_batch_size:
            raise ReforBertInputError(
                f"{len(train_indices)} training examples cannot fill one global batch of "
                f"{global_batch_size}; use more data or a smaller --global-batch-size"
            )
        self.train_indices = torch.as_tensor(list(train_indices), dtype=torch.long)
        self.global_batch_size = global_batch_size
        self.seed = seed

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_indices) // self.global_batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return self.train_indices[torch.randperm(len(self.train_indices), generator=generator)]

    def next_batch(self, state: TrainingState) -> tuple[list[int], int]:
        """The indices of the next global batch and their epoch; advances ``state``'s data position."""
        if state.position + self.global_batch_size > len(self.train_indices):
            state.epoch += 1
            state.position = 0
        indices = self.permutation(state.epoch)[state.position : state.position + self.global_batch_size]
        state.position += self.global_batch_size
        return indices.tolist(), state.epoch


def held_out_split(size: int, fraction: float, max_examples: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) indices: a seeded ``fraction`` of the data (at most ``max_examples``) is held out."""
    count = min(int(size * fraction), max_examples)
    if count <= 0:
        return list(range(size)), []
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    held = sorted(order[:count])
    held_set = set(held)
    return [i for i in range(size) if i not in held_set], held


def micro_batch_seed(seed: int, step: int, micro_batch: int) -> int:
    """The torch seed for dropout and LSH hashing in one micro-batch, the same on any process layout."""
    return (seed * 1_000_000_007 + step * 65_537 + micro_batch) % (2**63 - 1)


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Temporary folders (``.step-N.*.tmp``) never match."""
    folder = run_dir / "checkpoints"
    found = []
    if folder.is_dir():
        for entry in folder.iterdir():
            match = CHECKPOINT_PATTERN.match(entry.name)
            if match and entry.is_dir() and all((entry / name).is_file() for name in CHECKPOINT_FILES):
                found.append((int(match.group(1)), entry))
    return sorted(found)


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Split an optimizer state dict into flat tensors (for safetensors) and JSON-able param groups."""
    state_dict = optimizer.state_dict()
    tensors = {}
    for param_id, values in state_dict["state"].items():
        for name, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{param_id}.{name}"] = tensor.detach().cpu().contiguous()
    return tensors, state_dict["param_groups"]


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = tensor
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    state: TrainingState,
    settings: dict[str, Any],
    save_total_limit: int,
) -> Path:
    """Write ``checkpoints/step-N`` atomically, then delete the oldest beyond ``save_total_limit``."""
    final = run_dir / "checkpoints" / f"step-{state.step}"
    with atomic_directory(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        model.config.to_json_file(str(tmp / "config.json"))
        tensors, param_groups = optimizer_state_to_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        trainer_state = {
            **dataclasses.asdict(state),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "optimizer_param_groups": param_groups,
            "settings": settings,
        }
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1, default=float))
    if save_total_limit > 0:
        for _, old in list_checkpoints(run_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any
) -> TrainingState:
    """Restore everything :func:`save_checkpoint` wrote; a damaged or foreign checkpoint is an input error."""
    try:
        return _restore(checkpoint, model, optimizer, scheduler, scaler)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as error:
        raise ReforBertInputError(
            f"cannot resume from this checkpoint ({type(error).__name__}: {error})", checkpoint
        ) from None


def _restore(
    checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any
) -> TrainingState:
    load_model(model, str(checkpoint / "model.safetensors"))
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    optimizer.load_state_dict(
        optimizer_state_from_tensors(
            load_file(str(checkpoint / "optimizer.safetensors")), trainer_state["optimizer_param_groups"]
        )
    )
    scheduler.load_state_dict(trainer_state["scheduler"])
    if scaler is not None and trainer_state.get("scaler"):
        scaler.load_state_dict(trainer_state["scaler"])
    rng = load_file(str(checkpoint / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda_states = [rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    fields = {f.name for f in dataclasses.fields(TrainingState)}
    return TrainingState(**{k: v for k, v in trainer_state.items() if k in fields})


# ---------------------------------------------------------------------------------------------------
# Metrics


class MetricsLog:
    """RUN/metrics.jsonl (one JSON object per line, flushed each step) and RUN/tensorboard."""

    def __init__(self, run_dir: Path, resume_step: int | None, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.handle = None
        self.writer = None
        if not enabled:
            return
        if resume_step is not None:
            self._truncate_after(resume_step)
        self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events logged after the checkpoint by the interrupted run.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=(resume_step or 0) + 1)

    def _truncate_after(self, step: int) -> None:
        """Keep the lines up to the resumed step: a killed run may have logged later ones (or half a line)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        with atomic_file(self.path, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------------
# Batches


class BatchMaker:
    """Turns example indices into padded, masked tensors with :class:`PretrainingCollator`.

    Items carry their dataset ``index``; the collator seeds each example's mask from
    (seed, epoch, index), so a batch masks the same way whichever process builds it.
    """

    def __init__(self, dataset: Any, collator: Any, data_path: str, max_seq_len: int) -> None:
        self.dataset = dataset
        self.collator = collator
        self.data_path = data_path
        self.max_seq_len = max_seq_len

    def read(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The examples at ``indices``, each checked against ``max_seq_len``."""
        features = [self.dataset[i] for i in indices]
        for index, feature in zip(indices, features, strict=True):
            if len(feature["input_ids"]) > self.max_seq_len:
                raise ReforBertInputError(
                    f"example {index} has {len(feature['input_ids'])} tokens, more than --max-seq-len "
                    f"{self.max_seq_len}",
                    self.data_path,
                )
        return features

    def collate(self, features: Sequence[dict[str, Any]], epoch: int) -> dict[str, torch.Tensor]:
        self.collator.set_epoch(epoch)
        return self.collator(list(features))

    def __call__(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        return self.collate(self.read(indices), epoch)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device, nsp: bool) -> dict[str, torch.Tensor]:
    keys = ["input_ids", "attention_mask", "token_type_ids", "labels"] + (
        ["next_sentence_label"] if nsp else []
    )
    return {key: batch[key].to(device, non_blocking=True) for key in keys if key in batch}


def masked_predictions(
    prediction_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted ids, true ids) at the masked positions, whether logits cover all or only masked tokens."""
    masked = labels != -100
    if prediction_logits.dim() == 3:
        prediction_logits = prediction_logits[masked]
    return prediction_logits.argmax(dim=-1), labels[masked]


# ---------------------------------------------------------------------------------------------------
# The run


def _learning_rate_schedule(name: str, optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    from transformers import get_scheduler

    names = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    if name not in names:
        raise ReforBertInputError(f"unknown schedule {name!r}; choose linear, cosine or constant")
    return get_scheduler(names[name], optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _adamw(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    # BERT's recipe: no weight decay on biases and LayerNorm weights (the 1-D parameters).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-6)


def _resolve_precision(precision: str, device_is_cuda: bool) -> str:
    if precision == "auto":
        if device_is_cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and not device_is_cuda:
        raise ReforBertInputError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ReforBertInputError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    return precision


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> Path | None:
    """Refuse to touch a user's run by accident; return the checkpoint to resume from."""
    if resume:
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise ReforBertInputError(
                "--resume was given but there is no complete checkpoint to resume from",
                run_dir / "checkpoints",
            )
        if is_main:
            # Left by a run killed while writing a checkpoint; the complete ones never match this name.
            for stale in (run_dir / "checkpoints").glob(".step-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        return checkpoints[-1][1]
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ReforBertInputError(
                "already exists; pass --resume to continue it or --overwrite to replace it", run_dir
            )
        if is_main:
            for name in RUN_ENTRIES:
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    return None


def vocabulary_size(vocab_dir: str | Path) -> int:
    """Pieces in the vocabulary folder's SentencePiece model, the 7 specials included."""
    import sentencepiece

    model_file = Path(vocab_dir) / VOCAB_MODEL_FILE
    if not model_file.is_file():
        raise ReforBertInputError("vocabulary model is missing", model_file)
    return sentencepiece.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()


def build_config(preset: str, config_overrides: dict[str, Any] | None) -> ReforBertConfig:
    if preset not in PRESETS:
        raise ReforBertInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        return ReforBertConfig.from_preset(preset, **(config_overrides or {}))
    except (TypeError, ValueError) as error:
        raise ReforBertInputError(f"invalid model settings: {error}") from error


def _open_data(path: str | Path, vocab_dir: Path) -> Any:
    from reforbert.data import shards

    path = Path(path)
    if not path.exists():
        raise ReforBertInputError("pretraining data not found", path)
    dataset = shards.open_pretraining_data(path, vocab_dir=vocab_dir)
    shards.check_vocab(getattr(dataset, "metadata", {}), vocab_dir)
    return dataset


def pretrain(
    data: str | Path,
    vocab_dir: str | Path,
    output_dir: str | Path,
    *,
    preset: str = "mini",
    config_overrides: dict[str, Any] | None = None,
    max_seq_len: int = 512,
    micro_batch_size: int = 32,
    global_batch_size: int = 128,
    learning_rate: float = 1e-4,
    warmup_steps: int | None = None,
    schedule: str = "linear",
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    max_steps: int | None = None,
    max_tokens: int | None = None,
    time_budget_minutes: float | None = None,
    save_steps: int = 100,
    save_total_limit: int = 3,
    eval_steps: int | None = None,
    eval_data: str | Path | None = None,
    eval_fraction: float = 0.01,
    eval_max_examples: int = 2000,
    mlm_probability: float = 0.15,
    nsp: bool = True,
    precision: str = "auto",
    compile: bool = False,
    peak_tflops: float | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    log_every: int = 1,
    progress: bool = True,
    model_factory: Callable[[ReforBertConfig], torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Pretrain ReforBertForPreTraining and return a summary (final step, losses, throughput).

    Stops at ``max_steps``, after ``max_tokens`` non-padding tokens, or after ``time_budget_minutes`` of
    this invocation, whichever comes first (without max_steps or max_tokens, also after one epoch).
    The learning rate schedule spans ``max_steps`` or, without it, the steps ``max_tokens`` is expected
    to take, or one epoch.
    Raises :class:`NonFiniteLossError` on a NaN/inf loss and :class:`PretrainingOutOfMemory` when memory
    runs out.
    ``model_factory`` builds another model from the config (benchmarks train BERT with this same loop);
    it must accept the same inputs and return ``loss``, ``prediction_logits`` and ``seq_relationship_logits``.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    from reforbert.data.collator import PretrainingCollator
    from reforbert.modeling_reforbert import ReforBertForPreTraining

    run_dir = Path(output_dir)
    vocab_path = Path(vocab_dir)
    if not vocab_path.is_dir():
        raise ReforBertInputError("vocabulary folder not found", vocab_path)
    for name, value in (
        ("--micro-batch-size", micro_batch_size),
        ("--global-batch-size", global_batch_size),
        ("--save-steps", save_steps),
        ("--max-seq-len", max_seq_len),
    ):
        if value < 1:
            raise ReforBertInputError(f"{name} must be at least 1, got {value}")

    use_cuda = torch.cuda.is_available()
    precision = _resolve_precision(precision, use_cuda)
    # Accelerate keeps its settings in a process-wide singleton; clear them (not the process group)
    # so that one Python process can run several pretrainings with different precisions.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=not use_cuda,
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision],
        dynamo_backend="inductor" if compile else "no",
        # Without NSP the pooler and NSP head get no gradient, which DDP must be told about.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=not nsp)],
    )
    world = accelerator.num_processes
    is_main = accelerator.is_main_process
    if global_batch_size % (micro_batch_size * world):
        raise ReforBertInputError(
            f"--global-batch-size {global_batch_size} must be a multiple of --micro-batch-size "
            f"{micro_batch_size} x {world} processes"
        )
    accumulation = global_batch_size // (micro_batch_size * world)

    resume_from = _prepare_run_dir(run_dir, resume, overwrite, is_main)
    accelerator.wait_for_everyone()

    dataset = _open_data(data, vocab_path)
    if eval_data is not None:
        eval_dataset = _open_data(eval_data, vocab_path)
        train_indices, eval_indices = (
            list(range(len(dataset))),
            list(range(len(eval_dataset)))[:eval_max_examples],
        )
    else:
        eval_dataset = dataset
        train_indices, eval_indices = held_out_split(len(dataset), eval_fraction, eval_max_examples, seed)
    order = GlobalBatchOrder(train_indices, global_batch_size, seed)

    if resume_from is not None:
        config = ReforBertConfig.from_pretrained(str(resume_from))
    else:
        # The embedding table must match the vocabulary the data was made with, whatever the preset says.
        overrides = {"vocab_size": vocabulary_size(vocab_path), **(config_overrides or {})}
        config = build_config(preset, overrides)
    if max_seq_len > config.max_position_embeddings:
        raise ReforBertInputError(
            f"--max-seq-len {max_seq_len} exceeds the model's {config.max_position_embeddings} positions"
        )

    settings = {
        "data": str(Path(data).resolve()),
        "global_batch_size": global_batch_size,
        "seed": seed,
        "mlm_probability": mlm_probability,
        "nsp": nsp,
        "max_seq_len": max_seq_len,
        "micro_batch_size": micro_batch_size,
        "learning_rate": learning_rate,
        "schedule": schedule,
        "precision": precision,
        "preset": preset,
        "processes": world,
    }
    if resume_from is not None:
        saved = json.loads((resume_from / "trainer_state.json").read_text())["settings"]
        changed = [k for k in RESUME_INVARIANTS if saved.get(k) != settings[k]]
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {settings[k]!r}" for k in changed)
            raise ReforBertInputError(f"cannot resume with different settings ({details})", resume_from)

    if max_steps is not None:
        schedule_steps = max_steps
    elif max_tokens is not None:
        sample = [len(dataset[i]["input_ids"]) for i in train_indices[:1000]]
        schedule_steps = max(1, math.ceil(max_tokens / (global_batch_size * sum(sample) / len(sample))))
    else:
        schedule_steps = order.steps_per_epoch
    if warmup_steps is None:
        warmup_steps = min(1000, schedule_steps // 10)

    set_seed(seed)
    model = (model_factory or ReforBertForPreTraining)(config)
    optimizer = _adamw(model, learning_rate, weight_decay)
    scheduler = _learning_rate_schedule(schedule, optimizer, warmup_steps, schedule_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The plain module, for saving (a compiled wrapper would prefix every weight name).
    bare_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    state = TrainingState()
    if resume_from is not None:
        state = load_checkpoint(resume_from, bare_model, optimizer.optimizer, scheduler, accelerator.scaler)
    flops_per_token = count_model_flops_per_token(bare_model, bare_model.config, max_seq_len)
    if peak_tflops is not None:
        peak, peak_source = peak_tflops, "given with --peak-tflops"
    else:
        peak, peak_source = default_peak_tflops(accelerator.device, precision)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(run_dir / "run_settings.json", "w", encoding="utf-8") as handle:
            json.dump(
                {
                    **settings,
                    "schedule_steps": schedule_steps,
                    "warmup_steps": warmup_steps,
                    "mfu_flops_per_token": flops_per_token,
                    "mfu_peak_tflops": peak,
                    "mfu_peak_source": peak_source,
                    "model": config.to_dict(),
                },
                handle,
                indent=1,
                default=str,
            )

    collator = PretrainingCollator(
        config.vocab_size, mlm_probability=mlm_probability, seed=seed, pad_to_multiple_of=8
    )
    make_batch = BatchMaker(dataset, collator, str(data), max_seq_len)
    eval_collator = PretrainingCollator(
        config.vocab_size, mlm_probability=mlm_probability, seed=seed + 1, pad_to_multiple_of=8
    )
    make_eval_batch = BatchMaker(eval_dataset, eval_collator, str(eval_data or data), max_seq_len)

    if is_main:
        print(
            f"reforbert pretrain: {sum(p.numel() for p in bare_model.parameters()):,} parameters, "
            f"{world} process(es) x micro-batch {micro_batch_size} x {accumulation} accumulation = "
            f"global batch {global_batch_size}; precision {precision}; "
            f"MFU peak {peak if peak is None else f'{peak:.1f}'} TFLOP/s ({peak_source})",
            file=sys.stderr,
        )

    metrics = MetricsLog(run_dir, state.step if resume_from is not None else None, is_main)
    eval_every = eval_steps or save_steps
    start_time = time.perf_counter()
    started_tokens = state.tokens_seen
    progress_bar = None
    if is_main and progress:
        from tqdm.auto import tqdm

        progress_bar = tqdm(
            total=max_steps or schedule_steps,
            initial=state.step,
            desc="pretrain",
            unit="step",
            dynamic_ncols=True,
        )

    def reached_the_end() -> bool:
        if max_steps is not None or max_tokens is not None:
            return (max_steps is not None and state.step >= max_steps) or (
                max_tokens is not None and state.tokens_seen >= max_tokens
            )
        return state.step >= schedule_steps

    invocation_start = time.perf_counter()
    last_record: dict[str, Any] = {}
    try:
        while not reached_the_end():
            step_start = time.perf_counter()
            record = _train_step(
                model,
                optimizer,
                scheduler,
                accelerator,
                order,
                make_batch,
                state,
                nsp,
                micro_batch_size,
                accumulation,
                max_grad_norm,
                seed,
            )
            step_seconds = time.perf_counter() - step_start
            out_of_time = (
                time_budget_minutes is not None
                and time.perf_counter() - invocation_start >= time_budget_minutes * 60
            )
            # Every process must agree to stop at the same step.
            out_of_time = bool(
                accelerator.reduce(torch.tensor(float(out_of_time), device=accelerator.device), "sum").item()
            )
            run_seconds = time.perf_counter() - start_time
            tokens_per_s = (state.tokens_seen - started_tokens) / max(run_seconds, 1e-9)
            record.update(
                {
                    "tokens_per_s": tokens_per_s,
                    "step_tokens_per_s": record.pop("step_tokens") / max(step_seconds, 1e-9),
                    "step_seconds": step_seconds,
                    # tokens_seen counts every process; the peak is one device's.
                    "mfu": tokens_per_s * flops_per_token / (peak * 1e12 * world) if peak else None,
                    "elapsed": state.elapsed_seconds + run_seconds,
                }
            )
            last_record = record
            if state.step % log_every == 0:
                metrics.log(record)
            if progress_bar is not None:
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
            finished = out_of_time or reached_the_end()
            if eval_indices and (state.step % eval_every == 0 or finished):
                evaluation = evaluate(
                    model, accelerator, make_eval_batch, eval_indices, micro_batch_size, nsp
                )
                metrics.log({"step": state.step, **evaluation}, prefix="eval")
            if state.step % save_steps == 0 or finished:
                state.elapsed_seconds += time.perf_counter() - start_time
                start_time = time.perf_counter()
                started_tokens = state.tokens_seen
                if is_main:
                    save_checkpoint(
                        run_dir,
                        bare_model,
                        optimizer.optimizer,
                        scheduler,
                        accelerator.scaler,
                        state,
                        settings,
                        save_total_limit,
                    )
                accelerator.wait_for_everyone()
            if finished:
                break
    except NonFiniteLossError:
        last = list_checkpoints(run_dir)
        kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"the loss became NaN or infinite at step {state.step + 1}; training stopped and {kept}. "
            "Lower --learning-rate, raise --warmup-steps, or use --precision bf16/fp32 instead of fp16."
        ) from None
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise PretrainingOutOfMemory(
            f"out of memory at step {state.step + 1}: {error}\n{MEMORY_LEVERS}"
        ) from None
    except RuntimeError as error:
        if "out of memory" not in str(error).lower():
            raise
        raise PretrainingOutOfMemory(
            f"out of memory at step {state.step + 1}: {error}\n{MEMORY_LEVERS}"
        ) from None
    finally:
        if progress_bar is not None:
            progress_bar.close()
        metrics.close()

    if is_main:
        save_final_model(bare_model, vocab_path, run_dir / "model")
    accelerator.wait_for_everyone()
    return {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "run_dir": str(run_dir),
        "peak_tflops": peak,
        "peak_source": peak_source,
        **{k: v for k, v in last_record.items()},
    }


def group_by_length(indices: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """A global batch reordered by (length, index), so that the micro-batches cut from it hold examples of
    similar length and pad little. The set of examples per optimizer step is unchanged."""
    return [index for _, index in sorted(zip(lengths, indices, strict=True))]


def _train_step(
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    order: GlobalBatchOrder,
    make_batch: BatchMaker,
    state: TrainingState,
    nsp: bool,
    micro_batch_size: int,
    accumulation: int,
    max_grad_norm: float,
    seed: int,
) -> dict[str, Any]:
    """One optimizer step over one global batch; returns the step's averaged metrics.

    The MLM loss is the mean over every masked token of the global batch, whatever the micro-batch
    layout: each micro-batch's mean is weighted by its share of the masked tokens. Micro-batches of
    length-sorted examples differ a lot in masked tokens, so a plain mean of means would favour the
    tokens of short examples.
    """
    indices, epoch = order.next_batch(state)
    step = state.step + 1
    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    # Reading, masking and collating happen before the model runs; their time is the loop's own cost.
    data_start = time.perf_counter()
    # Each example is read once: its length orders the global batch, then it is collated.
    features = dict(zip(indices, make_batch.read(indices), strict=True))
    indices = group_by_length(indices, [len(features[index]["input_ids"]) for index in indices])
    # Global micro-batch m goes to process m % world, so every process gets a spread of lengths.
    micro_numbers = [local * world + rank for local in range(accumulation)]
    batches = [
        make_batch.collate(
            [features[index] for index in indices[micro * micro_batch_size : (micro + 1) * micro_batch_size]],
            epoch,
        )
        for micro in micro_numbers
    ]
    masked_counts = [int((batch["labels"] != -100).sum()) for batch in batches]
    global_masked = accelerator.reduce(
        torch.tensor(float(sum(masked_counts)), device=accelerator.device), "sum"
    ).item()
    data_seconds = time.perf_counter() - data_start
    # Sums over this process's micro-batches, kept on the device so that nothing waits for the
    # accelerator before the step ends: loss, mlm loss x masked tokens, nsp, tokens, mlm correct/total,
    # nsp correct/total.
    totals = torch.zeros(8, dtype=torch.float64, device=accelerator.device)
    for local, (micro, batch, masked) in enumerate(zip(micro_numbers, batches, masked_counts, strict=True)):
        inputs = model_inputs(batch, accelerator.device, nsp)
        torch.manual_seed(micro_batch_seed(seed, step, micro))
        sync = local == accumulation - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            outputs = model(**inputs, return_dict=True)
            mlm_loss = getattr(outputs, "mlm_loss", None)
            nsp_loss = getattr(outputs, "nsp_loss", None)
            if mlm_loss is not None:
                # Gradients are averaged over processes, hence the factor ``world``.
                mlm_weight = masked * world / max(global_masked, 1.0)
                loss = mlm_loss * mlm_weight + (nsp_loss / accumulation if nsp_loss is not None else 0.0)
            else:  # a model that reports one combined loss (the benchmark's BERT): mean of micro-batches
                loss = outputs.loss / accumulation
            accelerator.backward(loss)
        with torch.no_grad():
            predicted, true = masked_predictions(outputs.prediction_logits, inputs["labels"])
            totals[0] += loss.detach().double()
            if mlm_loss is not None:
                totals[1] += mlm_loss.detach().double() * masked
            if nsp_loss is not None:
                totals[2] += nsp_loss.detach().double()
            totals[3] += int(batch["attention_mask"].sum())
            totals[4] += (predicted == true).sum()
            totals[5] += true.numel()
            if nsp and getattr(outputs, "seq_relationship_logits", None) is not None:
                nsp_predicted = outputs.seq_relationship_logits.argmax(dim=-1)
                totals[6] += (nsp_predicted == inputs["next_sentence_label"].view(-1)).sum()
                totals[7] += nsp_predicted.numel()
    totals = accelerator.reduce(totals, "sum").cpu()
    micro_batches = accumulation * world
    loss = float(totals[0] / world)
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"loss {loss} at step {step}")
    if max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else None
    else:
        grad_norm = None
    learning_rate = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.step = step
    state.tokens_seen += int(totals[3])
    return {
        "step": step,
        "loss": loss,
        "mlm_loss": float(totals[1] / max(global_masked, 1.0)) if mlm_loss is not None else None,
        "nsp_loss": float(totals[2] / micro_batches) if nsp else None,
        "mlm_accuracy": float(totals[4] / max(float(totals[5]), 1.0)),
        "nsp_accuracy": float(totals[6] / totals[7]) if nsp and totals[7] > 0 else None,
        "lr": learning_rate,
        "grad_norm": grad_norm,
        "tokens_seen": state.tokens_seen,
        "epoch": epoch,
        "step_tokens": float(totals[3]),
        "data_seconds": data_seconds,
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    accelerator: Any,
    make_batch: BatchMaker,
    indices: Sequence[int],
    micro_batch_size: int,
    nsp: bool,
) -> dict[str, float]:
    """Held-out MLM loss (per masked token), MLM accuracy and NSP accuracy, with fixed masking."""
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(indices)[rank::world]
    # sums: mlm loss x masked tokens, masked tokens, mlm correct, nsp correct, nsp total,
    # [MASK]-replaced tokens, correct at them
    totals = torch.zeros(7, dtype=torch.float64)
    for start in range(0, len(mine), micro_batch_size):
        chunk = mine[start : start + micro_batch_size]
        inputs = model_inputs(make_batch(chunk, 0), accelerator.device, nsp)
        outputs = model(**inputs, return_dict=True)
        predicted, true = masked_predictions(outputs.prediction_logits, inputs["labels"])
        mlm_loss = getattr(outputs, "mlm_loss", None)
        if mlm_loss is None:
            mlm_loss = outputs.loss
        totals[0] += float(mlm_loss) * true.numel()
        totals[1] += true.numel()
        totals[2] += float((predicted == true).sum())
        # 10% of masked tokens are left unchanged and are solved by copying the input: report the
        # positions the model cannot see separately, they show whether it has learned from context.
        replaced = inputs["input_ids"][inputs["labels"] != -100] == MASK_ID
        totals[5] += float(replaced.sum())
        totals[6] += float(((predicted == true) & replaced).sum())
        if nsp and getattr(outputs, "seq_relationship_logits", None) is not None:
            nsp_predicted = outputs.seq_relationship_logits.argmax(dim=-1)
            totals[3] += float((nsp_predicted == inputs["next_sentence_label"].view(-1)).sum())
            totals[4] += nsp_predicted.numel()
    totals = accelerator.reduce(totals.to(accelerator.device), "sum").cpu()
    model.train()
    result = {
        "eval_mlm_loss": float(totals[0] / max(float(totals[1]), 1.0)),
        "eval_mlm_accuracy": float(totals[2] / max(float(totals[1]), 1.0)),
        "eval_mlm_accuracy_at_mask": float(totals[6] / max(float(totals[5]), 1.0)),
    }
    if nsp and totals[4] > 0:
        result["eval_nsp_accuracy"] = float(totals[3] / totals[4])
    return result


def save_final_model(model: torch.nn.Module, vocab_dir: Path, destination: Path) -> None:
    """RUN/model: weights + config (safetensors) and the tokenizer files, so Auto* load it directly."""
    with atomic_directory(destination) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for entry in vocab_dir.iterdir():
            if entry.is_file():
                shutil.copy2(entry, tmp / entry.name)


# ---------------------------------------------------------------------------------------------------
# Command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data", required=True, help="The pretraining data: a shard folder or the seed's JSON-lines files.")
    add(
        "--vocab",
        required=True,
        help="The vocabulary folder made by `reforbert vocab`; its tokenizer files "
        "are copied into the run's model folder.",
    )
    add("--output", required=True, help="The run folder to create (checkpoints, metrics, final model).")
    add("--preset", default="mini", choices=list(PRESETS), help="The model size to start from.")
    add(
        "--attention",
        choices=["lsh", "full", "auto"],
        help="The attention backend; auto uses full attention "
        "up to the config's full_attention_max_length and LSH beyond.",
    )
    add(
        "--reversible",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Use reversible residual layers, which recompute activations in the backward pass to save "
        "memory.",
    )
    add(
        "--ff-chunk-size",
        type=int,
        help="Run the feed-forward layer over this many positions at a time "
        "(0 runs it over the whole sequence at once).",
    )
    add("--bucket-size", type=int, help="The LSH attention bucket size.")
    add("--num-hashes", type=int, help="The number of LSH hashing rounds.")
    add(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Set any other config field, e.g. --config hidden_dropout_prob=0.0; may be repeated.",
    )
    add("--max-seq-len", type=int, default=512, help="The longest example accepted, in tokens.")
    add(
        "--micro-batch-size", type=int, default=32, help="Examples per forward/backward pass on each process."
    )
    add(
        "--global-batch-size",
        type=int,
        default=128,
        help="Examples per optimizer step over all processes, reached by gradient accumulation.",
    )
    add("--learning-rate", type=float, default=1e-4, help="The peak learning rate of AdamW.")
    add(
        "--warmup-steps",
        type=int,
        help="Steps of linear warm-up; by default 10%% of the schedule (at most 1000).",
    )
    add(
        "--schedule",
        choices=["linear", "cosine", "constant"],
        default="linear",
        help="How the learning rate decays after warm-up.",
    )
    add(
        "--weight-decay",
        type=float,
        default=0.01,
        help="AdamW weight decay, not applied to biases and LayerNorm weights.",
    )
    add(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="Clip the gradient norm to this value (0 disables it).",
    )
    add("--max-steps", type=int, help="Stop after this many optimizer steps.")
    add("--max-tokens", type=int, help="Stop after this many non-padding tokens.")
    add(
        "--time-budget-minutes",
        type=float,
        help="Stop (and save) after this many minutes of this invocation.",
    )
    add("--save-steps", type=int, default=100, help="Write a checkpoint every this many steps.")
    add(
        "--save-total-limit",
        type=int,
        default=3,
        help="Keep only this many most recent checkpoints (0 keeps them all).",
    )
    add("--eval-steps", type=int, help="Evaluate every this many steps; by default as often as checkpoints.")
    add("--eval-data", help="Held-out pretraining data; without it a small fraction of --data is held out.")
    add(
        "--eval-fraction",
        type=float,
        default=0.01,
        help="The fraction of --data held out when there is no --eval-data.",
    )
    add("--mlm-probability", type=float, default=0.15, help="The fraction of tokens masked for MLM.")
    add(
        "--nsp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Train next-sentence prediction alongside MLM (--no-nsp trains MLM only).",
    )
    add(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="Numeric precision: bf16 or fp16 autocast (fp16 with loss scaling, CUDA only) or fp32; auto "
        "picks bf16/fp16 on GPUs and fp32 on CPUs.",
    )
    add("--compile", action="store_true", help="Compile the model with torch.compile before training.")
    add(
        "--peak-tflops",
        type=float,
        help="The device's peak TFLOP/s used for MFU, instead of the built-in per-device estimate.",
    )
    add("--seed", type=int, default=0, help="The seed for initialisation, data order, masking and dropout.")
    add(
        "--resume",
        action="store_true",
        help="Continue the run in --output from its latest complete checkpoint.",
    )
    add("--overwrite", action="store_true", help="Replace an existing run in --output.")


def _parse_config_values(items: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ReforBertInputError(f"--config expects KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def config_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides = _parse_config_values(args.config)
    for flag, field in (
        ("attention", "attention_backend"),
        ("reversible", "reversible"),
        ("ff_chunk_size", "feed_forward_chunk_size"),
        ("bucket_size", "lsh_bucket_size"),
        ("num_hashes", "lsh_num_hashes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    return overrides


def run(args: argparse.Namespace) -> int:
    try:
        summary = pretrain(
            args.data,
            args.vocab,
            args.output,
            preset=args.preset,
            config_overrides=config_overrides_from_args(args),
            max_seq_len=args.max_seq_len,
            micro_batch_size=args.micro_batch_size,
            global_batch_size=args.global_batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps,
            schedule=args.schedule,
            weight_decay=args.weight_decay,
            max_grad_norm=args.max_grad_norm,
            max_steps=args.max_steps,
            max_tokens=args.max_tokens,
            time_budget_minutes=args.time_budget_minutes,
            save_steps=args.save_steps,
            save_total_limit=args.save_total_limit,
            eval_steps=args.eval_steps,
            eval_data=args.eval_data,
            eval_fraction=args.eval_fraction,
            mlm_probability=args.mlm_probability,
            nsp=args.nsp,
            precision=args.precision,
            compile=args.compile,
            peak_tflops=args.peak_tflops,
            seed=args.seed,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    except NonFiniteLossError as error:
        print(f"reforbert pretrain: error: {error}", file=sys.stderr)
        return 3
    except PretrainingOutOfMemory as error:
        print(f"reforbert pretrain: error: {error}", file=sys.stderr)
        return 4
    print(
        f"reforbert pretrain: finished at step {summary['step']} ({summary['tokens_seen']:,} tokens); "
        f"final model in {Path(args.output) / 'model'}",
        file=sys.stderr,
    )
    return 0
