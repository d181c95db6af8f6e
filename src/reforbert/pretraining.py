"""``reforbert pretrain``: masked-language-model + next-sentence pretraining of ReforBertForPreTraining.

The file reads in the order of a run: the data order, metrics, batches and running sums, then the
setup steps (data, model, optimizer and schedule, accelerator, checkpoints), the training step,
evaluation, and the loop itself in :func:`run_pretraining`. Every setting comes from one
:class:`~reforbert.pretraining_arguments.PretrainingArguments`; checkpoint files are written and read by
:mod:`reforbert.checkpointing`, FLOP and MFU accounting live in :mod:`reforbert.flops`.

The loop runs on Hugging Face Accelerate, which supplies process groups (``torchrun`` /
``accelerate launch``, NCCL on GPUs, gloo on CPUs), DistributedDataParallel with ``no_sync`` during
gradient accumulation and gradient clipping. Autocast and fp16 loss scaling come from ``torch.amp``
directly: Accelerate fixes the precision once per process, and tests and benchmarks run pretrainings of
different precisions one after another. A hand-written loop (rather than the Trainer) is what makes the
guarantees below cheap to keep:

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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model

from reforbert.checkpointing import (
    SHAPE_FIELDS,
    TrainingObjects,
    TrainingState,
    list_checkpoints,
    load_checkpoint,
    newest_usable_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from reforbert.configuration_reforbert import IGNORE_INDEX, MASK_ID, PRESETS, ReforBertConfig
from reforbert.data.prefetch import Prefetcher
from reforbert.data.vocab import SENTENCEPIECE_MODEL_FILE, tokenizer_files, vocabulary_fingerprint
from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_directory, atomic_file
from reforbert.flops import count_model_flops_per_token, default_peak_tflops, model_flops_utilization
from reforbert.hardware import cpu_has_native_bf16
from reforbert.pretraining_arguments import PretrainingArguments, arguments_from_namespace, changed_invariants
from reforbert.schedule import (
    EVAL_COST_PER_TRAINING_EXAMPLE,
    FIT_AFTER_STEPS,
    LearningRateSchedule,
    measured_step_seconds,
    steps_that_fit,
)

# The provisional length of a schedule fitted to the time budget without --max-steps: long enough that
# its rate stays at the peak until the fit, which comes after FIT_AFTER_STEPS steps.
UNFITTED_SCHEDULE_STEPS = 10**9
# What a run folder holds; --overwrite removes exactly these and nothing else the user put there.
RUN_ENTRIES = ("checkpoints", "model", "metrics.jsonl", "tensorboard", "run_settings.json", "curves.png")

MEMORY_LEVERS = """\
Ways to reduce memory, roughly from most to least effective:
  --reversible             reversible residual layers keep one layer's activations instead of all of them;
  --ff-chunk-size N        run the feed-forward layer over N positions at a time (e.g. 64 or 128);
  --micro-batch-size N     a smaller micro-batch; --global-batch-size stays the same through accumulation;
  --attention lsh          LSH attention instead of full attention for long sequences
                           (with a smaller --bucket-size or fewer --num-hashes);
  --precision bf16         half-precision activations (on the CPU only where it has bf16 units)."""

# Builds the model to train from its config. The default is ReforBertForPreTraining; another factory
# must return a module that takes the same inputs and returns ``mlm_loss``, ``nsp_loss`` (None without
# next-sentence labels), ``prediction_logits`` and ``seq_relationship_logits``, and has a ``config``
# with ``to_json_file`` and a ``save_pretrained`` method (benchmarks/pretrain_throughput.py trains
# Hugging Face BERT through this loop this way).
ModelFactory = Callable[[ReforBertConfig], torch.nn.Module]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left in place."""


class PretrainingOutOfMemory(RuntimeError):
    """The device ran out of memory; the message lists the settings that reduce memory."""


class PretrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT stopped the run after a step; a checkpoint of that step was written."""

    def __init__(self, received: signal.Signals, checkpoint: Path) -> None:
        super().__init__(
            f"stopped by {received.name} after writing {checkpoint}; to continue, run the same command "
            "with --resume"
        )
        self.received = received


@contextlib.contextmanager
def _writing(what: str, path: Path, intact: str = "") -> Iterator[None]:
    """A failed write (disk full, file too large, read-only folder) as a one-line error saying what
    was not written and what is still intact."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        raise ReforBertInputError(f"could not write {what} ({error}){intact}", path) from None


class StopRequests:
    """SIGTERM and SIGINT (what schedulers and Ctrl-C send) ask the loop to stop after the current step.

    A second signal stops at once, for a user who does not want to wait for the step to end.
    Handlers can only be installed from the main thread; elsewhere the signals keep their defaults.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(number)
        print(
            f"reforbert pretrain: {self.received.name} received; finishing this step and writing a "
            "checkpoint (send it again to stop at once)",
            file=sys.stderr,
        )

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


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
        # An epoch's permutation is drawn once, not for every batch: over a million examples a draw takes
        # tens of milliseconds, longer than a small model's step on a GPU. Two epochs are kept, because
        # the data workers' look-ahead crosses an epoch boundary before the loop does.
        self._permutations: dict[int, torch.Tensor] = {}

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_indices) // self.global_batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            drawn = self.train_indices[torch.randperm(len(self.train_indices), generator=generator)]
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = drawn
        return self._permutations[epoch]

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
        from torch.utils.tensorboard import SummaryWriter

        with _writing("the metrics log", self.path):
            if resume_step is not None:
                self._truncate_after(resume_step)
            self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
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
        with _writing("the metrics log", self.path):
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.handle is not None:
            # Every line was flushed when logged; a failing disk must not hide the error that stopped the run.
            with contextlib.suppress(OSError):
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
    masked = labels != IGNORE_INDEX
    if prediction_logits.dim() == 3:
        prediction_logits = prediction_logits[masked]
    return prediction_logits.argmax(dim=-1), labels[masked]


def group_by_length(indices: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """A global batch reordered by (length, index), so that the micro-batches cut from it hold examples of
    similar length and pad little. The set of examples per optimizer step is unchanged."""
    return [index for _, index in sorted(zip(lengths, indices, strict=True))]


# ---------------------------------------------------------------------------------------------------
# Running sums


def _all_reduce_sums(sums: Any, accelerator: Any) -> Any:
    """A dataclass of numeric sums added up over every process in one call; the result holds floats."""
    values = [getattr(sums, field.name) for field in dataclasses.fields(sums)]
    stacked = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=accelerator.device) for v in values]
    )
    return type(sums)(*(float(x) for x in accelerator.reduce(stacked, "sum").cpu()))


@dataclasses.dataclass
class StepSums:
    """Sums over one process's micro-batches of a training step.

    They stay on the device (0-dimensional float64 tensors) so that nothing waits for the accelerator
    before the step ends; :meth:`all_reduce` adds them up over the processes in one call.
    """

    loss: Any
    mlm_loss_x_masked: Any  # each micro-batch's mean MLM loss times its masked tokens
    nsp_loss: Any
    tokens: Any  # non-padding tokens
    mlm_correct: Any
    mlm_total: Any
    nsp_correct: Any
    nsp_total: Any

    @classmethod
    def zeros(cls, device: torch.device) -> StepSums:
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in dataclasses.fields(cls)))

    def all_reduce(self, accelerator: Any) -> StepSums:
        return _all_reduce_sums(self, accelerator)


@dataclasses.dataclass
class EvalSums:
    """Sums over one process's held-out examples."""

    mlm_loss_x_masked: float = 0.0
    masked: float = 0.0
    mlm_correct: float = 0.0
    nsp_correct: float = 0.0
    nsp_total: float = 0.0
    shown_as_mask: float = 0.0  # masked positions whose input is [MASK] (not a random or the same token)
    correct_at_mask: float = 0.0

    def all_reduce(self, accelerator: Any) -> EvalSums:
        return _all_reduce_sums(self, accelerator)


# ---------------------------------------------------------------------------------------------------
# Setup: data, model, optimizer and schedule, accelerator, checkpoints


@dataclasses.dataclass
class PretrainingData:
    """The training and held-out examples: datasets and the indices of each split."""

    dataset: Any
    eval_dataset: Any
    train_indices: list[int]
    eval_indices: list[int]


def _open_data(path: str | Path, vocab_dir: Path) -> Any:
    from reforbert.data import shards

    path = Path(path)
    if not path.exists():
        raise ReforBertInputError("pretraining data not found", path)
    dataset = shards.open_pretraining_data(path, vocab_dir=vocab_dir)
    shards.check_vocab(getattr(dataset, "metadata", {}), vocab_dir)
    return dataset


def load_data(args: PretrainingArguments) -> PretrainingData:
    """--data, and --eval-data or a seeded held-out fraction of --data."""
    vocab = Path(args.vocab)
    dataset = _open_data(args.data, vocab)
    if args.eval_data is not None:
        eval_dataset = _open_data(args.eval_data, vocab)
        eval_indices = list(range(len(eval_dataset)))[: args.eval_max_examples]
        return PretrainingData(dataset, eval_dataset, list(range(len(dataset))), eval_indices)
    train, held = held_out_split(len(dataset), args.eval_fraction, args.eval_max_examples, args.seed)
    return PretrainingData(dataset, dataset, train, held)


def build_batch_makers(
    args: PretrainingArguments, config: ReforBertConfig, data: PretrainingData
) -> tuple[BatchMaker, BatchMaker]:
    """Training and held-out batches; held-out masks use another seed and never change between evaluations."""
    from reforbert.data.collator import PretrainingCollator

    def collator(seed: int, mlm_probability: float) -> PretrainingCollator:
        return PretrainingCollator(
            config.vocab_size,
            mlm_probability=mlm_probability,
            seed=seed,
            pad_to_multiple_of=8,
            whole_word_mask=args.whole_word_mask,
            vocab_dir=args.vocab,
        )

    train = BatchMaker(
        data.dataset, collator(args.seed, args.mlm_probability), str(args.data), args.max_seq_len
    )
    held_out = BatchMaker(
        data.eval_dataset,
        collator(args.seed + 1, args.eval_mlm_probability),
        str(args.eval_data or args.data),
        args.max_seq_len,
    )
    return train, held_out


def vocabulary_size(vocab_dir: str | Path) -> int:
    """Pieces in the vocabulary folder's SentencePiece model, the 7 specials included."""
    import sentencepiece

    model_file = Path(vocab_dir) / SENTENCEPIECE_MODEL_FILE
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


def saved_model_config(model_dir: Path, vocab_dir: Path, overrides: dict[str, Any]) -> ReforBertConfig:
    """The config of a saved model folder (for --init-from), checked against --vocab, with ``overrides``."""
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise ReforBertInputError(
                f"not a saved ReforBERT model folder: no {name} (only safetensors weights are read)",
                model_dir,
            )
    try:
        saved = ReforBertConfig.from_json_file(str(model_dir / "config.json"))
        config = ReforBertConfig.from_dict({**saved.to_dict(), **overrides})
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise ReforBertInputError(f"unusable model config ({error})", model_dir / "config.json") from None
    pieces = vocabulary_size(vocab_dir)
    # The saved embedding table's size, not an override's: the weights come from the saved model.
    if saved.vocab_size != pieces or config.vocab_size != pieces:
        raise ReforBertInputError(
            f"the model has a vocabulary of {saved.vocab_size} pieces but --vocab {vocab_dir} has {pieces}; "
            "pass the vocabulary the model was trained with",
            model_dir,
        )
    saved_vocab = model_dir / SENTENCEPIECE_MODEL_FILE
    if saved_vocab.is_file() and vocabulary_fingerprint(saved_vocab) != vocabulary_fingerprint(
        vocab_dir / SENTENCEPIECE_MODEL_FILE
    ):
        raise ReforBertInputError(
            f"the model was trained with another vocabulary than --vocab {vocab_dir}; "
            "pass the vocabulary the model was trained with",
            model_dir,
        )
    return config


def model_config(args: PretrainingArguments, resume_from: Path | None) -> ReforBertConfig:
    """The checkpoint's config on --resume, the saved model's with --init-from, else the preset's."""
    if resume_from is not None:
        config = ReforBertConfig.from_pretrained(str(resume_from))
    elif args.init_from is not None:
        config = saved_model_config(Path(args.init_from), Path(args.vocab), args.model_config_overrides())
    else:
        # The embedding table must match the vocabulary the data was made with, whatever the preset says.
        overrides = {"vocab_size": vocabulary_size(args.vocab), **args.model_config_overrides()}
        config = build_config(args.preset, overrides)
    if args.max_seq_len > config.max_position_embeddings:
        raise ReforBertInputError(
            f"--max-seq-len {args.max_seq_len} exceeds the model's {config.max_position_embeddings} positions"
        )
    return config


def build_model(
    args: PretrainingArguments, config: ReforBertConfig, model_factory: ModelFactory | None = None
) -> torch.nn.Module:
    """A freshly initialised model (seeded by --seed), or the saved model's weights with --init-from."""
    from accelerate.utils import set_seed

    from reforbert.modeling_reforbert import ReforBertForPreTraining

    set_seed(args.seed)
    model = (model_factory or ReforBertForPreTraining)(config)
    if args.init_from is not None:
        weights = Path(args.init_from) / "model.safetensors"
        try:
            load_model(model, str(weights))
        except (OSError, ValueError, RuntimeError) as error:
            raise ReforBertInputError(
                f"cannot load these weights ({type(error).__name__}: {error})", weights
            ) from None
    return model


def schedule_length(args: PretrainingArguments, data: PretrainingData, order: GlobalBatchOrder) -> int:
    """The schedule's length: --max-steps, the steps --max-tokens should take, or one epoch. A schedule
    fitted to the time budget starts as long as --max-steps allows (the fit shortens it after a few steps
    of warm-up, whose rates do not depend on the length)."""
    if args.fit_schedule_to_time_budget:
        return args.max_steps if args.max_steps is not None else UNFITTED_SCHEDULE_STEPS
    if args.max_steps is not None:
        return args.max_steps
    if args.max_tokens is not None:
        sample = [len(data.dataset[i]["input_ids"]) for i in data.train_indices[:1000]]
        return max(1, math.ceil(args.max_tokens / (args.global_batch_size * sum(sample) / len(sample))))
    return order.steps_per_epoch


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
        # On a CPU without bf16 units PyTorch emulates bf16, which is far slower than fp32.
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not device_is_cuda:
        raise ReforBertInputError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ReforBertInputError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if precision == "bf16" and not device_is_cuda and not cpu_has_native_bf16():
        print(
            "reforbert pretrain: warning: this CPU has no bf16 units (AMX or AVX512-BF16), so bf16 is "
            "emulated and trains many times slower than --precision fp32 or auto",
            file=sys.stderr,
        )
    return precision


def start_accelerator(args: PretrainingArguments) -> Any:
    """The process group (one process, or those ``torchrun`` started) and this process's device."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    use_cuda = torch.cuda.is_available()
    try:
        return Accelerator(
            cpu=not use_cuda,
            # Always "no": the loop autocasts itself (see the module docstring).
            mixed_precision="no",
            # Without NSP the pooler and NSP head get no gradient, which DDP must be told about.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=not args.nsp)],
        )
    except ValueError as error:
        # Accelerate's state is process-wide: a Trainer run earlier in this Python process (e.g.
        # fine-tuning with bf16) fixed other settings, which no public API can undo.
        raise ReforBertInputError(
            "this Python process already set up Accelerate with other settings (a fine-tuning run?); "
            "pretrain in a fresh process, e.g. with the `reforbert pretrain` command"
        ) from error


def _autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the forward pass's autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def expected_model_shape(run_dir: Path, vocab_dir: str | Path) -> dict[str, Any]:
    """What a checkpoint of this run must have been written for: the vocabulary size of --vocab and the
    shape of the model that RUN/run_settings.json records (when it is readable)."""
    expected: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        model = json.loads((run_dir / "run_settings.json").read_text(encoding="utf-8"))["model"]
        expected = {key: model[key] for key in SHAPE_FIELDS if key in model}
    return {**expected, "vocab_size": vocabulary_size(vocab_dir)}


def _checkpoint_to_resume(args: PretrainingArguments, is_main: bool) -> Path:
    """The newest usable checkpoint; damaged newer ones are named and passed over, never silently."""
    run_dir = Path(args.output)
    checkpoint, skipped = newest_usable_checkpoint(run_dir, expected_model_shape(run_dir, args.vocab))
    if is_main:
        for reason in skipped:
            print(f"reforbert pretrain: warning: cannot resume from {reason}", file=sys.stderr)
        if skipped:
            print(f"reforbert pretrain: resuming from {checkpoint.name} instead", file=sys.stderr)
        # Left by a run killed while writing a checkpoint; the complete ones never match this name.
        for stale in (run_dir / "checkpoints").glob(".step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    return checkpoint


def _prepare_run_dir(args: PretrainingArguments, is_main: bool) -> Path | None:
    """Refuse to touch a user's run by accident; return the checkpoint to resume from."""
    run_dir = Path(args.output)
    if args.resume:
        return _checkpoint_to_resume(args, is_main)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not args.overwrite:
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


def check_resumable(checkpoint: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume with settings that would silently change the data order, masking or loss."""
    changed = changed_invariants(read_trainer_state(checkpoint).get("settings") or {}, settings)
    if changed:
        raise ReforBertInputError(f"cannot resume with different settings ({', '.join(changed)})", checkpoint)


def run_settings(args: PretrainingArguments, precision: str, processes: int) -> dict[str, Any]:
    """The arguments as this run uses them: the data path made absolute, the precision resolved."""
    return {
        **dataclasses.asdict(args),
        "data": str(Path(args.data).resolve()),
        "precision": precision,
        "processes": processes,
    }


# ---------------------------------------------------------------------------------------------------
# The trainer: everything the loop works with, built once


@dataclasses.dataclass
class Trainer:
    """What :func:`set_up` builds and every step, evaluation and checkpoint uses."""

    args: PretrainingArguments
    config: ReforBertConfig  # the config the model was built from (its shape, for FLOP counting)
    accelerator: Any
    model: torch.nn.Module  # as prepared by Accelerate (distributed, compiled): the one to call
    optimizer: Any  # as prepared by Accelerate: the one to step
    objects: TrainingObjects  # the plain model, optimizer, scheduler and loss scaler: the ones to save
    scaler: torch.amp.GradScaler  # a pass-through unless the precision is fp16
    autocast: Callable[[], contextlib.AbstractContextManager]
    order: GlobalBatchOrder
    make_batch: BatchMaker
    make_eval_batch: BatchMaker
    eval_indices: list[int]
    accumulation: int  # micro-batches per process per optimizer step
    settings: dict[str, Any]
    state: TrainingState
    resumed: bool
    prefetcher: Prefetcher | None = None  # set while the loop runs with --data-workers

    @property
    def schedule_steps(self) -> int:
        """The schedule's length: from the arguments, or as fitted to the time budget (then restored
        from the checkpoint on --resume)."""
        return self.objects.scheduler.total

    @property
    def run_dir(self) -> Path:
        return Path(self.args.output)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def reached_the_end(self) -> bool:
        args, state = self.args, self.state
        if args.fit_schedule_to_time_budget:  # never longer than --max-steps, fitted or not
            return state.step >= self.schedule_steps
        if args.max_steps is not None or args.max_tokens is not None:
            return (args.max_steps is not None and state.step >= args.max_steps) or (
                args.max_tokens is not None and state.tokens_seen >= args.max_tokens
            )
        return state.step >= self.schedule_steps

    def any_process(self, *flags: bool) -> list[bool]:
        """Each flag True on every process when it is True on any, so that all stop at the same step."""
        if self.accelerator.num_processes == 1:
            return list(flags)  # no round trip through the device, which would wait for its queue
        local = torch.tensor([float(flag) for flag in flags], device=self.accelerator.device)
        return [bool(total) for total in self.accelerator.reduce(local, "sum").tolist()]

    def save(self) -> Path:
        folder = self.run_dir / "checkpoints" / f"step-{self.state.step}"
        if self.is_main:
            previous = list_checkpoints(self.run_dir)
            intact = f"; {previous[-1][1]} is intact" if previous else ""
            with _writing(
                "the checkpoint", folder, intact + "; free space or fix permissions, then --resume"
            ):
                save_checkpoint(
                    self.run_dir, self.state, self.objects, self.settings, self.args.save_total_limit
                )
        self.accelerator.wait_for_everyone()
        return folder


def _accumulation_steps(args: PretrainingArguments, processes: int) -> int:
    if args.global_batch_size % (args.micro_batch_size * processes):
        raise ReforBertInputError(
            f"--global-batch-size {args.global_batch_size} must be a multiple of --micro-batch-size "
            f"{args.micro_batch_size} x {processes} processes"
        )
    return args.global_batch_size // (args.micro_batch_size * processes)


def build_optimizer_and_schedule(
    args: PretrainingArguments, model: torch.nn.Module, schedule_steps: int
) -> tuple[torch.optim.AdamW, Any, int]:
    """AdamW and its learning-rate schedule; also the warm-up steps (by default 10% of the schedule)."""
    warmup = args.warmup_steps if args.warmup_steps is not None else min(1000, schedule_steps // 10)
    optimizer = _adamw(model, args.learning_rate, args.weight_decay)
    return optimizer, LearningRateSchedule(optimizer, args.schedule, warmup, schedule_steps), warmup


def prepare_for_training(
    args: PretrainingArguments,
    accelerator: Any,
    precision: str,
    model: torch.nn.Module,
    objects: TrainingObjects,
) -> tuple[torch.nn.Module, Any, TrainingObjects]:
    """The model and optimizer as Accelerate prepares them (device, DDP, compilation); ``objects`` as
    checkpoints save them: the plain module (a compiled wrapper would prefix every weight name), the
    plain optimizer, and the fp16 loss scaler."""
    model, optimizer = accelerator.prepare(model, objects.optimizer)
    if args.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(accelerator.device.type) if precision == "fp16" else None
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    return model, optimizer, TrainingObjects(plain, optimizer.optimizer, objects.scheduler, scaler)


def _loss_scaler(objects: TrainingObjects) -> torch.amp.GradScaler:
    """The checkpointed fp16 scaler, or a pass-through one (its methods do nothing but step) otherwise."""
    return objects.scaler if objects.scaler is not None else torch.amp.GradScaler(enabled=False)


def set_up(args: PretrainingArguments, model_factory: ModelFactory | None = None) -> Trainer:
    """Check the arguments, open the run folder and the data, build the model, optimizer and schedule,
    and restore the latest checkpoint on --resume."""
    args.validate()
    if not Path(args.vocab).is_dir():
        raise ReforBertInputError("vocabulary folder not found", args.vocab)
    precision = _resolve_precision(args.precision, torch.cuda.is_available())
    accelerator = start_accelerator(args)
    accumulation = _accumulation_steps(args, accelerator.num_processes)
    resume_from = _prepare_run_dir(args, accelerator.is_main_process)
    accelerator.wait_for_everyone()

    data = load_data(args)
    order = GlobalBatchOrder(data.train_indices, args.global_batch_size, args.seed)
    config = model_config(args, resume_from)
    settings = run_settings(args, precision, accelerator.num_processes)
    if resume_from is not None:
        check_resumable(resume_from, settings)
    schedule_steps = schedule_length(args, data, order)

    model = build_model(args, config, model_factory)
    optimizer, scheduler, settings["warmup_steps"] = build_optimizer_and_schedule(args, model, schedule_steps)
    model, prepared_optimizer, objects = prepare_for_training(
        args, accelerator, precision, model, TrainingObjects(model, optimizer, scheduler)
    )
    state = load_checkpoint(resume_from, objects) if resume_from is not None else TrainingState()
    make_batch, make_eval_batch = build_batch_makers(args, config, data)
    return Trainer(
        args=args,
        config=config,
        accelerator=accelerator,
        model=model,
        optimizer=prepared_optimizer,
        objects=objects,
        scaler=_loss_scaler(objects),
        autocast=_autocast(accelerator.device, precision),
        order=order,
        make_batch=make_batch,
        make_eval_batch=make_eval_batch,
        eval_indices=data.eval_indices,
        accumulation=accumulation,
        settings=settings,
        state=state,
        resumed=resume_from is not None,
    )


# ---------------------------------------------------------------------------------------------------
# Throughput and the run's record


@dataclasses.dataclass
class Throughput:
    """Tokens/s and MFU since the last checkpoint, and the run's wall-clock time across invocations."""

    state: TrainingState
    flops_per_token: float
    peak_tflops: float | None
    peak_source: str
    processes: int
    since: float = dataclasses.field(default_factory=time.perf_counter)
    tokens_at_start: int = -1

    def __post_init__(self) -> None:
        if self.tokens_at_start < 0:
            self.tokens_at_start = self.state.tokens_seen

    def step_record(self, step_tokens: float, step_seconds: float) -> dict[str, Any]:
        run_seconds = time.perf_counter() - self.since
        tokens_per_s = (self.state.tokens_seen - self.tokens_at_start) / max(run_seconds, 1e-9)
        return {
            "tokens_per_s": tokens_per_s,
            "step_tokens_per_s": step_tokens / max(step_seconds, 1e-9),
            "step_seconds": step_seconds,
            # tokens_seen counts every process; the peak is one device's.
            "mfu": model_flops_utilization(
                tokens_per_s, self.flops_per_token, self.peak_tflops, self.processes
            ),
            "elapsed": self.state.elapsed_seconds + run_seconds,
        }

    def checkpoint(self) -> None:
        """Fold the time since the last checkpoint into the state that the checkpoint saves."""
        self.state.elapsed_seconds += time.perf_counter() - self.since
        self.since = time.perf_counter()
        self.tokens_at_start = self.state.tokens_seen


def measure_throughput(trainer: Trainer) -> Throughput:
    flops_per_token = count_model_flops_per_token(
        trainer.objects.model, trainer.config, trainer.args.max_seq_len
    )
    if trainer.args.peak_tflops is not None:
        peak, source = trainer.args.peak_tflops, "given with --peak-tflops"
    else:
        peak, source = default_peak_tflops(trainer.accelerator.device, trainer.settings["precision"])
    return Throughput(trainer.state, flops_per_token, peak, source, trainer.accelerator.num_processes)


def write_run_settings(trainer: Trainer, throughput: Throughput) -> None:
    """RUN/run_settings.json: the arguments as used, the schedule, the MFU basis and the model config."""
    if not trainer.is_main:
        return
    _write_settings_file(trainer, throughput)
    args, world = trainer.args, trainer.accelerator.num_processes
    peak = throughput.peak_tflops
    print(
        f"reforbert pretrain: {sum(p.numel() for p in trainer.objects.model.parameters()):,} parameters, "
        f"{world} process(es) x micro-batch {args.micro_batch_size} x {trainer.accumulation} accumulation = "
        f"global batch {args.global_batch_size}; precision {trainer.settings['precision']}; "
        f"MFU peak {peak if peak is None else f'{peak:.1f}'} TFLOP/s ({throughput.peak_source})",
        file=sys.stderr,
    )


def _write_settings_file(trainer: Trainer, throughput: Throughput) -> None:
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **trainer.settings,
        "warmup_steps": trainer.objects.scheduler.effective_warmup,  # a fitted schedule may shorten it
        "schedule_steps": trainer.schedule_steps,
        "schedule_fitted_to_time_budget": trainer.objects.scheduler.fitted_total is not None,
        "mfu_flops_per_token": throughput.flops_per_token,
        "mfu_peak_tflops": throughput.peak_tflops,
        "mfu_peak_source": throughput.peak_source,
        "model": trainer.objects.model.config.to_dict(),
    }
    path = trainer.run_dir / "run_settings.json"
    with _writing("the run settings", path), atomic_file(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, default=str)


# ---------------------------------------------------------------------------------------------------
# Fitting the schedule to the time budget


@dataclasses.dataclass
class ScheduleFitting:
    """Step times of this invocation until the schedule's length is fitted to ``deadline``."""

    deadline: float  # time.monotonic() at which the time budget ends
    step_seconds: list[float] = dataclasses.field(default_factory=list)


def _schedule_fitting(trainer: Trainer, deadline: float | None) -> ScheduleFitting | None:
    """What fits the schedule in this invocation; None when it is not asked for or already fitted."""
    if not trainer.args.fit_schedule_to_time_budget or trainer.objects.scheduler.fitted_total is not None:
        return None
    assert deadline is not None  # validate() requires --time-budget-minutes
    return ScheduleFitting(deadline)


def fit_schedule(trainer: Trainer, fitting: ScheduleFitting, throughput: Throughput) -> dict[str, Any] | None:
    """Once enough steps are timed: fix the schedule's length so that it ends before the deadline, within
    --max-steps; returns the record to log then, else None. Every process takes the main one's length."""
    if len(fitting.step_seconds) < FIT_AFTER_STEPS:
        return None
    args, state = trainer.args, trainer.state
    step_seconds = measured_step_seconds(fitting.step_seconds)
    eval_every = args.eval_steps or args.save_steps
    # An evaluation runs a forward pass over every held-out example.
    eval_batches = len(trainer.eval_indices) / args.global_batch_size
    eval_seconds = eval_batches * step_seconds * EVAL_COST_PER_TRAINING_EXAMPLE
    remaining = fitting.deadline - time.monotonic()
    more = steps_that_fit(remaining, step_seconds, eval_seconds=eval_seconds, eval_every=eval_every)
    total = state.step + more
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        total = int(broadcast(torch.tensor([total], device=trainer.accelerator.device)).item())
    trainer.objects.scheduler.fit(total)
    if trainer.is_main:
        _write_settings_file(trainer, throughput)
        print(
            f"reforbert pretrain: {step_seconds:.3f} s a step (median of the last "
            f"{len(fitting.step_seconds) - len(fitting.step_seconds) // 2}); the schedule ends at step "
            f"{total:,}, within the time budget",
            file=sys.stderr,
        )
    return {"step": state.step, "schedule_steps": total, "fitted_step_seconds": step_seconds}


# ---------------------------------------------------------------------------------------------------
# One training step


@dataclasses.dataclass
class MicroBatch:
    number: int  # global micro-batch number within the step: seeds its dropout and LSH hashing
    inputs: dict[str, torch.Tensor]  # on the device
    masked: int  # masked tokens
    tokens: int  # non-padding tokens
    syncs: bool  # the last of this process's micro-batches: DDP all-reduces gradients after it


StepKey = tuple[tuple[int, ...], int]  # a global batch's example indices and their epoch


@dataclasses.dataclass(frozen=True)
class StepCollator:
    """One process's share of a global batch as CPU tensors: its micro-batches, sorted by length and
    masked. A pure function of the key, so data workers (see :mod:`reforbert.data.prefetch`) make the
    same batches as the loop itself."""

    make_batch: BatchMaker
    micro_batch_size: int
    accumulation: int
    rank: int
    world: int

    def micro_batch_number(self, local: int) -> int:
        # Global micro-batch m goes to process m % world, so every process gets a spread of lengths.
        return local * self.world + self.rank

    def __call__(self, key: StepKey) -> list[dict[str, torch.Tensor]]:
        indices, epoch = list(key[0]), key[1]
        # Each example is read once: its length orders the global batch, then it is collated.
        features = dict(zip(indices, self.make_batch.read(indices), strict=True))
        indices = group_by_length(indices, [len(features[index]["input_ids"]) for index in indices])
        size, batches = self.micro_batch_size, []
        for local in range(self.accumulation):
            number = self.micro_batch_number(local)
            chunk = [features[index] for index in indices[number * size : (number + 1) * size]]
            batches.append(self.make_batch.collate(chunk, epoch))
        return batches


def step_collator(trainer: Trainer) -> StepCollator:
    accelerator = trainer.accelerator
    return StepCollator(
        trainer.make_batch,
        trainer.args.micro_batch_size,
        trainer.accumulation,
        accelerator.process_index,
        accelerator.num_processes,
    )


def upcoming_steps(order: GlobalBatchOrder, state: TrainingState) -> Iterator[StepKey]:
    """The keys of the global batches the loop will take from ``state`` on (``state`` is not changed)."""
    ahead = dataclasses.replace(state)
    while True:
        indices, epoch = order.next_batch(ahead)
        yield tuple(indices), epoch


@contextlib.contextmanager
def _prefetching(trainer: Trainer) -> Iterator[None]:
    """With --data-workers, the loop's batches are made ahead in worker processes for the run's duration."""
    if trainer.args.data_workers < 1:
        yield
        return
    with Prefetcher(
        step_collator(trainer),
        upcoming_steps(trainer.order, trainer.state),
        trainer.args.data_workers,
        pin_memory=trainer.accelerator.device.type == "cuda",
    ) as prefetcher:
        trainer.prefetcher = prefetcher
        try:
            yield
        finally:
            trainer.prefetcher = None


def _micro_batches(trainer: Trainer, indices: list[int], epoch: int) -> list[MicroBatch]:
    """This process's micro-batches of one global batch, on the device."""
    collate, key = step_collator(trainer), (tuple(indices), epoch)
    batches = trainer.prefetcher.next(key) if trainer.prefetcher is not None else collate(key)
    return [
        MicroBatch(
            collate.micro_batch_number(local),
            model_inputs(batch, trainer.accelerator.device, trainer.args.nsp),
            int((batch["labels"] != IGNORE_INDEX).sum()),
            int(batch["attention_mask"].sum()),
            syncs=local == trainer.accumulation - 1,
        )
        for local, batch in enumerate(batches)
    ]


def _forward_backward(
    trainer: Trainer, step: int, micro: MicroBatch, global_masked: float, sums: StepSums
) -> None:
    """Forward and backward over one micro-batch, adding its numbers to ``sums``."""
    accelerator, world = trainer.accelerator, trainer.accelerator.num_processes
    torch.manual_seed(micro_batch_seed(trainer.args.seed, step, micro.number))
    with contextlib.nullcontext() if micro.syncs else accelerator.no_sync(trainer.model):
        with trainer.autocast():
            outputs = trainer.model(**micro.inputs, return_dict=True)
        # Gradients are averaged over processes, hence the factor ``world``.
        mlm_weight = micro.masked * world / max(global_masked, 1.0)
        nsp_loss = outputs.nsp_loss
        loss = outputs.mlm_loss * mlm_weight + (
            nsp_loss / trainer.accumulation if nsp_loss is not None else 0.0
        )
        accelerator.backward(trainer.scaler.scale(loss))
    with torch.no_grad():
        predicted, true = masked_predictions(outputs.prediction_logits, micro.inputs["labels"])
        sums.loss += loss.detach().double()
        sums.mlm_loss_x_masked += outputs.mlm_loss.detach().double() * micro.masked
        if nsp_loss is not None:
            sums.nsp_loss += nsp_loss.detach().double()
            nsp_predicted = outputs.seq_relationship_logits.argmax(dim=-1)
            sums.nsp_correct += (nsp_predicted == micro.inputs["next_sentence_label"].view(-1)).sum()
            sums.nsp_total += nsp_predicted.numel()
        sums.tokens += micro.tokens
        sums.mlm_correct += (predicted == true).sum()
        sums.mlm_total += true.numel()


def _optimizer_step(trainer: Trainer) -> tuple[float | None, float]:
    """Clip, step the optimizer and the schedule; (gradient norm before clipping, learning rate used)."""
    grad_norm = None
    if trainer.args.max_grad_norm > 0:
        trainer.scaler.unscale_(trainer.optimizer)  # clip the true gradients, not the fp16-scaled ones
        norm = trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
        grad_norm = float(norm) if norm is not None else None
    learning_rate = trainer.objects.scheduler.get_last_lr()[0]
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.objects.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return grad_norm, learning_rate


def _train_step(trainer: Trainer, state: TrainingState) -> dict[str, Any]:
    """One optimizer step over one global batch; returns the step's averaged metrics.

    The MLM loss is the mean over every masked token of the global batch, whatever the micro-batch
    layout: each micro-batch's mean is weighted by its share of the masked tokens. Micro-batches of
    length-sorted examples differ a lot in masked tokens, so a plain mean of means would favour the
    tokens of short examples.
    """
    indices, epoch = trainer.order.next_batch(state)
    step, accelerator, nsp = state.step + 1, trainer.accelerator, trainer.args.nsp
    trainer.model.train()
    # Reading, masking and collating happen before the model runs; their time is the loop's own cost
    # (with --data-workers, the wait for a batch made ahead and its copy to the device).
    data_start = time.perf_counter()
    micro_batches = _micro_batches(trainer, indices, epoch)
    global_masked = float(sum(m.masked for m in micro_batches))  # counted on the CPU
    if accelerator.num_processes > 1:
        # Only then the count goes through the device: reading it back waits for every queued kernel,
        # which on a single GPU would keep the CPU from queueing this step while the last one runs.
        local_masked = torch.tensor(global_masked, device=accelerator.device)
        global_masked = accelerator.reduce(local_masked, "sum").item()
    data_seconds = time.perf_counter() - data_start
    sums = StepSums.zeros(accelerator.device)
    for micro in micro_batches:
        _forward_backward(trainer, step, micro, global_masked, sums)
    totals = sums.all_reduce(accelerator)
    loss = totals.loss / accelerator.num_processes
    if not math.isfinite(loss):
        trainer.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"loss {loss} at step {step}")
    grad_norm, learning_rate = _optimizer_step(trainer)
    state.step = step
    state.tokens_seen += int(totals.tokens)
    return {
        "step": step,
        "loss": loss,
        "mlm_loss": totals.mlm_loss_x_masked / max(global_masked, 1.0),
        "nsp_loss": totals.nsp_loss / (trainer.accumulation * accelerator.num_processes) if nsp else None,
        "mlm_accuracy": totals.mlm_correct / max(totals.mlm_total, 1.0),
        "nsp_accuracy": totals.nsp_correct / totals.nsp_total if nsp and totals.nsp_total > 0 else None,
        "lr": learning_rate,
        "grad_norm": grad_norm,
        "tokens_seen": state.tokens_seen,
        "epoch": epoch,
        "step_tokens": totals.tokens,
        "data_seconds": data_seconds,
    }


@torch.no_grad()
def evaluate(trainer: Trainer) -> dict[str, float]:
    """Held-out MLM loss (per masked token), MLM accuracy and NSP accuracy, with fixed masking."""
    model, accelerator, nsp = trainer.model, trainer.accelerator, trainer.args.nsp
    model.eval()
    mine = list(trainer.eval_indices)[accelerator.process_index :: accelerator.num_processes]
    sums = EvalSums()
    for start in range(0, len(mine), trainer.args.micro_batch_size):
        chunk = mine[start : start + trainer.args.micro_batch_size]
        inputs = model_inputs(trainer.make_eval_batch(chunk, 0), accelerator.device, nsp)
        with trainer.autocast():
            outputs = model(**inputs, return_dict=True)
        predicted, true = masked_predictions(outputs.prediction_logits, inputs["labels"])
        sums.mlm_loss_x_masked += float(outputs.mlm_loss) * true.numel()
        sums.masked += true.numel()
        sums.mlm_correct += float((predicted == true).sum())
        # 10% of masked tokens are left unchanged and are solved by copying the input: report the
        # positions the model cannot see separately, they show whether it has learned from context.
        shown_as_mask = inputs["input_ids"][inputs["labels"] != IGNORE_INDEX] == MASK_ID
        sums.shown_as_mask += float(shown_as_mask.sum())
        sums.correct_at_mask += float(((predicted == true) & shown_as_mask).sum())
        if nsp:
            nsp_predicted = outputs.seq_relationship_logits.argmax(dim=-1)
            sums.nsp_correct += float((nsp_predicted == inputs["next_sentence_label"].view(-1)).sum())
            sums.nsp_total += nsp_predicted.numel()
    totals = sums.all_reduce(accelerator)
    model.train()
    result = {
        "eval_mlm_loss": totals.mlm_loss_x_masked / max(totals.masked, 1.0),
        "eval_mlm_accuracy": totals.mlm_correct / max(totals.masked, 1.0),
        "eval_mlm_accuracy_at_mask": totals.correct_at_mask / max(totals.shown_as_mask, 1.0),
    }
    if nsp and totals.nsp_total > 0:
        result["eval_nsp_accuracy"] = totals.nsp_correct / totals.nsp_total
    return result


def save_final_model(model: torch.nn.Module, vocab_dir: Path, destination: Path) -> None:
    """RUN/model: weights + config (safetensors) and the tokenizer files, so Auto* load it directly."""
    with atomic_directory(destination) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for entry in tokenizer_files(vocab_dir):
            shutil.copy2(entry, tmp / entry.name)


# ---------------------------------------------------------------------------------------------------
# The loop


@contextlib.contextmanager
def _failures_explained(trainer: Trainer) -> Iterator[None]:
    """Turn a diverged loss or an exhausted memory into an error that says what to do about it."""
    try:
        yield
    except NonFiniteLossError:
        last = list_checkpoints(trainer.run_dir)
        kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"the loss became NaN or infinite at step {trainer.state.step + 1}; training stopped and {kept}. "
            "Lower --learning-rate, raise --warmup-steps, or use --precision bf16/fp32 instead of fp16."
        ) from None
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "out of memory" not in str(error).lower():
            raise
        raise PretrainingOutOfMemory(
            f"out of memory at step {trainer.state.step + 1}: {error}\n{MEMORY_LEVERS}"
        ) from None


@contextlib.contextmanager
def _closing(metrics: MetricsLog, progress_bar: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if progress_bar is not None:
            progress_bar.close()
        metrics.close()


def _show_progress(progress_bar: Any, record: dict[str, Any]) -> None:
    if progress_bar is not None:
        progress_bar.update(1)
        progress_bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}")


def _progress_bar(trainer: Trainer) -> Any:
    if not (trainer.is_main and trainer.args.progress):
        return None
    from tqdm.auto import tqdm

    total = trainer.args.max_steps or trainer.schedule_steps
    if total == UNFITTED_SCHEDULE_STEPS:
        total = None  # not known until the schedule is fitted to the time budget
    return tqdm(total=total, initial=trainer.state.step, desc="pretrain", unit="step", dynamic_ncols=True)


def run_pretraining(args: PretrainingArguments, model_factory: ModelFactory | None = None) -> dict[str, Any]:
    """Pretrain ReforBertForPreTraining and return a summary (final step, losses, throughput).

    Stops at ``max_steps``, after ``max_tokens`` non-padding tokens, or after ``time_budget_minutes`` of
    this invocation, whichever comes first (without max_steps or max_tokens, also after one epoch).
    The learning rate schedule spans ``max_steps`` or, without it, the steps ``max_tokens`` is expected
    to take, or one epoch; with ``fit_schedule_to_time_budget``, the steps that fit the time budget at the
    pace of the first steps (:mod:`reforbert.schedule`).
    Raises :class:`NonFiniteLossError` on a NaN/inf loss and :class:`PretrainingOutOfMemory` when memory
    runs out. ``model_factory`` trains another model through the same loop (see :data:`ModelFactory`).
    """
    trainer = set_up(args, model_factory)
    throughput = measure_throughput(trainer)
    write_run_settings(trainer, throughput)
    state, eval_every = trainer.state, args.eval_steps or args.save_steps
    metrics = MetricsLog(trainer.run_dir, state.step if trainer.resumed else None, trainer.is_main)
    progress_bar = _progress_bar(trainer)
    deadline = None if args.time_budget_minutes is None else time.monotonic() + 60 * args.time_budget_minutes
    fitting = _schedule_fitting(trainer, deadline)
    record: dict[str, Any] = {}
    with (
        StopRequests() as stop,
        _failures_explained(trainer),
        _closing(metrics, progress_bar),
        _prefetching(trainer),
    ):
        while not trainer.reached_the_end():
            step_start = time.perf_counter()
            record = _train_step(trainer, state)  # train
            record.update(throughput.step_record(record.pop("step_tokens"), time.perf_counter() - step_start))
            if fitting is not None:
                fitting.step_seconds.append(record["step_seconds"])
                fitted = fit_schedule(trainer, fitting, throughput)
                if fitted is not None:
                    metrics.log(fitted, prefix="schedule")
                    if progress_bar is not None:
                        progress_bar.total = trainer.schedule_steps
                    fitting = None
            out_of_time, interrupted = trainer.any_process(
                deadline is not None and time.monotonic() >= deadline, stop.received is not None
            )
            finished = out_of_time or interrupted or trainer.reached_the_end()
            if state.step % args.log_every == 0:  # log
                metrics.log(record)
            _show_progress(progress_bar, record)
            # An interrupted run evaluates only where the uninterrupted one would: it must exit soon.
            if trainer.eval_indices and (state.step % eval_every == 0 or (finished and not interrupted)):
                metrics.log({"step": state.step, **evaluate(trainer)}, prefix="eval")  # evaluate
            if state.step % args.save_steps == 0 or finished:  # save
                throughput.checkpoint()
                checkpoint = trainer.save()
            if interrupted:
                raise PretrainingInterrupted(stop.received or signal.SIGTERM, checkpoint)
            if finished:
                break
    if trainer.is_main:
        with _writing("the final model", trainer.run_dir / "model", "; the last checkpoint is intact"):
            save_final_model(trainer.objects.model, Path(args.vocab), trainer.run_dir / "model")
    trainer.accelerator.wait_for_everyone()
    return {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "run_dir": str(trainer.run_dir),
        "peak_tflops": throughput.peak_tflops,
        "peak_source": throughput.peak_source,
        **record,
    }


def pretrain(
    data: str | Path,
    vocab_dir: str | Path,
    output_dir: str | Path,
    *,
    model_factory: ModelFactory | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """:func:`run_pretraining` with the settings as keywords, the fields of :class:`PretrainingArguments`
    (``recipe`` among them): e.g. ``pretrain(data, vocab, run, max_steps=10)``."""
    args = PretrainingArguments.resolve(data=data, vocab=vocab_dir, output=output_dir, **settings)
    return run_pretraining(args, model_factory)


# ---------------------------------------------------------------------------------------------------
# Command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.pretraining_arguments import configure_parser as add_arguments

    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    arguments = arguments_from_namespace(args)
    try:
        summary = run_pretraining(arguments)
    except NonFiniteLossError as error:
        print(f"reforbert pretrain: error: {error}", file=sys.stderr)
        return 3
    except PretrainingOutOfMemory as error:
        print(f"reforbert pretrain: error: {error}", file=sys.stderr)
        return 4
    except PretrainingInterrupted as error:
        print(f"reforbert pretrain: {error}", file=sys.stderr)
        return 128 + error.received  # the shell's convention for a process ended by a signal
    print(
        f"reforbert pretrain: finished at step {summary['step']} ({summary['tokens_seen']:,} tokens); "
        f"final model in {Path(arguments.output) / 'model'}",
        file=sys.stderr,
    )
    return 0
