"""Fine-tune a pretrained ReforBERT (or any Hugging Face encoder) on one Korean benchmark and score it.

The benchmark-specific parts (reading files, encoding, scoring) live in ``reforbert.tasks``; this
module only wires them to the Hugging Face ``Trainer``, which runs unchanged on CPU, one GPU, or
several GPUs under ``torchrun``. Every run ends in one ``results/<task>.json`` that records what was
measured and exactly how, so that ``reforbert report`` can render it without guessing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

import reforbert  # registers the ReforBERT classes with the Auto* factories
from reforbert.configuration_reforbert import ATTENTION_BACKENDS, IGNORE_INDEX
from reforbert.errors import ReforBertInputError, check_positive
from reforbert.fileio import atomic_directory, atomic_file, refuse_to_overwrite, sha256_of
from reforbert.hardware import cpu_has_native_bf16
from reforbert.tasks import TASKS, get_task

BF16_CHOICES = ("auto", "on", "off")
# Published recipes (KoBERT, KoELECTRA) use plain AdamW without weight decay on these benchmarks.
WEIGHT_DECAY = 0.0
ADAM_EPSILON = 1e-8
MAX_GRAD_NORM = 1.0


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Splits:
    train: list[Any]
    eval: list[Any]
    kind: str  # "test", "dev", "carved-dev", ...: what the results table calls the split
    description: str
    eval_source: Path  # the file the evaluation examples came from


def check_evaluation_source(task_name: str, eval_file: Path | None, dev_fraction: float | None) -> None:
    if eval_file is not None and dev_fraction is not None:
        raise ReforBertInputError("give either an eval file or --dev-fraction, not both")
    if eval_file is None and dev_fraction is None:
        raise ReforBertInputError(
            f"no evaluation data for {task_name}: pass --eval FILE, or --dev-fraction F to carve a dev split "
            "out of the train file"
        )
    if dev_fraction is not None and not 0.0 < dev_fraction < 1.0:
        raise ReforBertInputError(f"--dev-fraction must be between 0 and 1, got {dev_fraction}")


def load_splits(
    task: Any,
    train_file: Path,
    eval_file: Path | None,
    dev_fraction: float | None,
    split_name: str | None,
    seed: int,
) -> Splits:
    """Read the train file and the eval file, or carve the eval examples out of the train file."""
    train_examples = task.read(train_file)
    if eval_file is not None:
        kind = split_name or guess_split_name(eval_file)
        return Splits(train_examples, task.read(eval_file), kind, f"{kind} file {eval_file.name}", eval_file)
    if len(train_examples) < 2:
        raise ReforBertInputError("too few examples to carve a dev split", train_file)
    train_examples, eval_examples = task.split_dev(train_examples, dev_fraction, seed)
    description = f"carved dev of {dev_fraction * 100:g}% of {train_file.name} by seed {seed}"
    return Splits(train_examples, eval_examples, split_name or "carved-dev", description, train_file)


def resolve_task(task_name: str) -> Any:
    """The task object for ``task_name``, or an error that lists the tasks there are."""
    if task_name not in TASKS:
        raise ReforBertInputError(f"unknown task {task_name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return get_task(task_name)


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ReforBertInputError(f"{what} not found" if not path.exists() else f"{what} is not a file", path)
    return path


def _require_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ReforBertInputError("model folder not found", path)
    if not (path / "config.json").is_file():
        raise ReforBertInputError("model folder has no config.json (not a save_pretrained folder)", path)
    return path


def subsample(examples: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random subset in file order: the head of a file is often sorted and so unrepresentative."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise ReforBertInputError(f"example limit must be at least 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def guess_split_name(path: Path) -> str:
    """Name the evaluation split after its file, so a table can say test vs dev without a flag."""
    name = path.name.lower()
    if "test" in name:
        return "test"
    if "dev" in name or "val" in name:
        return "dev"
    return path.stem


# --------------------------------------------------------------------------------------------
# Data plumbing
# --------------------------------------------------------------------------------------------


class FeatureDataset(torch.utils.data.Dataset):
    """The encoded features as a map-style dataset; metadata stays outside, for scoring only."""

    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


class PaddingCollator:
    """Pads each batch to its own longest sequence (dynamic padding) for every head type.

    Sequence keys are right-padded (input ids with the pad id, token labels with ``IGNORE_INDEX`` so
    the loss ignores them); scalar labels become a tensor whose dtype follows the values (float ->
    regression).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        padding_value = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}
        batch: dict[str, torch.Tensor] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if isinstance(values[0], (list, tuple)):
                fill = padding_value.get(key, 0)
                rows = [list(v) + [fill] * (longest - len(v)) for v in values]
                batch[key] = torch.tensor(rows, dtype=torch.long)
            else:
                is_float = any(isinstance(v, float) for v in values)
                batch[key] = torch.tensor(values, dtype=torch.float32 if is_float else torch.long)
        if "attention_mask" not in batch:
            mask = [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        return batch


# --------------------------------------------------------------------------------------------
# Model, precision, time budget
# --------------------------------------------------------------------------------------------


def load_model(task: Any, model_dir: Path) -> torch.nn.Module:
    auto_class = {
        "sequence-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
        "question-answering": AutoModelForQuestionAnswering,
    }[task.head]
    # Training keeps fp32 master weights (autocast supplies bf16/fp16 speed); a checkpoint stored in
    # fp16 would otherwise be loaded, and trained, in fp16.
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if task.head != "question-answering":
        kwargs["num_labels"] = task.num_labels
    if task.label_names:
        kwargs["id2label"] = dict(enumerate(task.label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(task.label_names)}
    check_parsable_files(model_dir)
    with _reported_as_input_error("a model", model_dir):
        model = auto_class.from_pretrained(str(model_dir), **kwargs)
    check_config_types(model.config, model_dir / "config.json")
    return model


def check_config_types(config: Any, config_file: Path) -> None:
    """Refuse a config.json value of the wrong type (``"layer_norm_eps": null``, a string for a size).

    The model builds from such a config and fails only inside its first forward pass; the defaults
    of the config class's own parameters say which type each value must have.
    """
    for name, parameter in inspect.signature(type(config).__init__).parameters.items():
        default = parameter.default
        if not isinstance(default, (bool, int, float, str, tuple)) or not hasattr(config, name):
            continue
        value = getattr(config, name)
        if isinstance(default, bool):
            fits = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            allowed = int if isinstance(default, int) else (int, float)
            fits = isinstance(value, allowed) and not isinstance(value, bool)
        elif isinstance(default, str):
            fits = isinstance(value, str)
        else:
            fits = isinstance(value, (tuple, list)) and all(isinstance(item, int) for item in value)
        if not fits:
            raise ReforBertInputError(
                f"{name} is {value!r}, expected a {type(default).__name__} like {default!r}", config_file
            )


def check_parsable_files(folder: Path) -> None:
    """Name the damaged file itself when a JSON or safetensors file of a model folder cannot be parsed."""
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ReforBertInputError(f"not UTF-8 text ({error.reason})", path) from None
        except json.JSONDecodeError as error:
            raise ReforBertInputError(f"not valid JSON ({error.msg})", path, error.lineno) from None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass  # opening reads and checks the header against the file's length
        except (SafetensorError, OSError) as error:
            raise ReforBertInputError(f"not a readable safetensors file ({error})", path) from None


@contextlib.contextmanager
def _reported_as_input_error(what: str, folder: Path) -> Iterator[None]:
    """Report any failure of a Hugging Face loader on ``folder`` as the one-line input error.

    ``from_pretrained`` raises whatever its parsers meet in a damaged but parsable file (TypeError,
    AttributeError, validation errors, SafetensorError), and the tokenizers library surfaces a Rust
    panic as PanicException, which derives from BaseException; to a user all of them mean the same:
    this folder cannot be loaded.
    """
    try:
        yield
    except ReforBertInputError:
        raise
    except BaseException as error:
        if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        message = f"cannot load {what} from this folder ({_one_line(error)})"
        raise ReforBertInputError(message, folder) from error


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}"


def check_tokenizer_fits_model(tokenizer: Any, model: torch.nn.Module, model_dir: Path) -> None:
    """Refuse a tokenizer with ids beyond the model's embedding table: training would fail at once."""
    embedding_rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embedding_rows:
        raise ReforBertInputError(
            f"the tokenizer has {len(tokenizer)} ids but the model's embedding only {embedding_rows}; "
            "use the tokenizer the model was pretrained with",
            model_dir,
        )


def load_tokenizer(tokenizer_dir: Path) -> Any:
    check_parsable_files(tokenizer_dir)
    with _reported_as_input_error("a tokenizer", tokenizer_dir):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        pair = tokenizer("가", "나")["input_ids"]
    # Every head reads the [CLS] ... [SEP] layout; a tokenizer.json without its template loads silently.
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None or pair[:1] != [cls_id] or pair[-1:] != [sep_id]:
        raise ReforBertInputError(
            "the tokenizer does not put [CLS] before and [SEP] after its input "
            "(tokenizer.json lost its post-processor?)",
            tokenizer_dir,
        )
    return tokenizer


def resolve_bf16(choice: str | bool, use_cuda: bool) -> bool:
    if isinstance(choice, bool):
        return choice
    if choice not in BF16_CHOICES:
        raise ReforBertInputError(f"bf16 must be one of {', '.join(BF16_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice == "on"
    if use_cuda:
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


class TimeBudgetCallback(TrainerCallback):
    """Stops training once the wall-clock budget is spent; evaluation still runs afterwards."""

    def __init__(self, budget_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        self.started = 0.0
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        spent = time.monotonic() - self.started >= self.budget_seconds
        # Under torchrun every process must stop at the same step, or the others wait forever.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            on_gpu = torch.distributed.get_backend() == "nccl"
            flag = torch.tensor([float(spent)], device="cuda" if on_gpu else "cpu")
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            spent = bool(flag.item())
        if spent and state.global_step < state.max_steps:
            self.stopped_early = True
            control.should_training_stop = True
        return control


def describe_model(model: torch.nn.Module, model_dir: Path) -> dict[str, Any]:
    config = model.config
    fields = (
        "model_type",
        "attention_backend",
        "reversible",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "lsh_bucket_size",
        "lsh_num_hashes",
    )
    described = {name: getattr(config, name) for name in fields if hasattr(config, name)}
    described["path"] = str(model_dir.resolve())
    described["num_parameters"] = sum(p.numel() for p in model.parameters())
    return described


def device_description(use_cuda: bool, world_size: int) -> str:
    if use_cuda:
        name = torch.cuda.get_device_name(0)
        return f"{world_size} x {name}" if world_size > 1 else name
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _to_builtin(value: Any) -> Any:
    """JSON-safe copies of numpy scalars and arrays that metrics may contain."""
    if isinstance(value, dict):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def training_arguments(
    scratch: str,
    *,
    epochs: float,
    max_steps: int | None,
    learning_rate: float,
    per_device_batch: int,
    use_cuda: bool,
    use_bf16: bool,
    seed: int,
    logging_steps: int | None,
    progress: bool,
    group_by_length: bool = False,
) -> Any:
    """AdamW with linear decay and no warmup, as the published Korean baselines were fine-tuned."""
    return TrainingArguments(
        **batch_order_arguments(group_by_length),
        output_dir=scratch,  # required by the Trainer; nothing is saved there (save_strategy "no")
        num_train_epochs=float(epochs),
        max_steps=max_steps if max_steps is not None else -1,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=WEIGHT_DECAY,
        adam_epsilon=ADAM_EPSILON,
        max_grad_norm=MAX_GRAD_NORM,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=per_device_batch * 2,
        bf16=use_bf16,
        use_cpu=not use_cuda,
        seed=seed,
        data_seed=seed,
        logging_strategy="steps",
        logging_steps=logging_steps or 50,
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        # Our features carry only model inputs already; the column filter would need a datasets.Dataset.
        remove_unused_columns=False,
    )


def batch_order_arguments(group_by_length: bool) -> dict[str, Any]:
    """The TrainingArguments that set the order of training examples. Grouping examples of similar
    length into a batch cuts the padding the collator adds (random batches of 32 NSMC reviews hold
    3.3x their real tokens), at some cost in accuracy (README). transformers 5.0 and 5.1 spell it
    ``group_by_length``, later releases ``train_sampling_strategy``."""
    if "train_sampling_strategy" in {field.name for field in fields(TrainingArguments)}:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


# --------------------------------------------------------------------------------------------
# The run: check inputs -> settings -> data -> model -> train and evaluate -> results record -> write
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuningSettings:
    """The hyperparameters of one run, after the task's published defaults filled the gaps."""

    epochs: float
    max_steps: int | None
    time_budget_minutes: float | None
    learning_rate: float
    batch_size: int  # global, as the published recipes give it
    max_seq_length: int
    max_train_examples: int | None
    max_eval_examples: int | None
    seed: int
    group_by_length: bool
    use_cuda: bool
    use_bf16: bool
    world_size: int

    @property
    def per_device_batch(self) -> int:
        # The published batch sizes are global; under torchrun split them over the processes.
        return max(1, self.batch_size // self.world_size)

    def record(self) -> dict[str, Any]:
        """The ``hyperparameters`` entry of the results record."""
        return {
            "optimizer": "AdamW",
            "lr_schedule": "linear decay, no warmup",
            "learning_rate": self.learning_rate,
            "weight_decay": WEIGHT_DECAY,
            "adam_epsilon": ADAM_EPSILON,
            "max_grad_norm": MAX_GRAD_NORM,
            "batch_size": self.per_device_batch * self.world_size,
            "per_device_batch_size": self.per_device_batch,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "time_budget_minutes": self.time_budget_minutes,
            "max_seq_length": self.max_seq_length,
            "max_train_examples": self.max_train_examples,
            "max_eval_examples": self.max_eval_examples,
            "seed": self.seed,
            "batch_order": "grouped by length" if self.group_by_length else "random",
            "bf16": self.use_bf16,
        }


@dataclass
class PreparedData:
    """The examples a run trains and scores on, and their encoded features."""

    splits: Splits
    train_examples: list[Any]
    eval_examples: list[Any]
    train_encoded: Any  # the task's EncodedSplit
    eval_encoded: Any
    tokenizer: Any


@dataclass
class Outcome:
    """What training and evaluation produced."""

    trainer: Trainer
    train_loss: float
    metrics: dict[str, Any]
    confusion_matrix: list[list[int]] | None
    train_seconds: float
    eval_seconds: float
    stopped_by_time_budget: bool


def check_paths(
    model_dir: str | Path,
    tokenizer_dir: str | Path | None,
    train_file: str | Path,
    eval_file: str | Path | None,
) -> tuple[Path, Path, Path, Path | None]:
    """The model folder, tokenizer folder, train file and eval file, each checked to exist."""
    model_dir = _require_model_dir(model_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else model_dir
    if not tokenizer_dir.is_dir():
        raise ReforBertInputError("tokenizer folder not found", tokenizer_dir)
    train_file = _require_file(train_file, "train file")
    eval_file = _require_file(eval_file, "eval file") if eval_file is not None else None
    return model_dir, tokenizer_dir, train_file, eval_file


def resolve_settings(task: Any, bf16: str | bool, **given: Any) -> FinetuningSettings:
    """Fill the hyperparameters not ``given`` (None) from the task's published defaults."""
    check_positive(
        epochs=given["epochs"],
        max_steps=given["max_steps"],
        time_budget_minutes=given["time_budget_minutes"],
        learning_rate=given["learning_rate"],
        batch_size=given["batch_size"],
        max_seq_len=given["max_seq_length"],
    )
    for name in ("epochs", "learning_rate", "batch_size", "max_seq_length"):
        if given[name] is None:
            given[name] = getattr(task.defaults, name)
    use_cuda = torch.cuda.is_available()
    return FinetuningSettings(
        **given,
        use_cuda=use_cuda,
        use_bf16=resolve_bf16(bf16, use_cuda),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def prepare_data(
    task: Any,
    train_file: Path,
    eval_file: Path | None,
    tokenizer_dir: Path,
    settings: FinetuningSettings,
    dev_fraction: float | None,
    eval_split_name: str | None,
) -> PreparedData:
    """Read (or carve) the splits, subsample them as asked, and encode them with the tokenizer."""
    seed = settings.seed
    splits = load_splits(task, train_file, eval_file, dev_fraction, eval_split_name, seed)
    train_examples = subsample(splits.train, settings.max_train_examples, seed)
    eval_examples = subsample(splits.eval, settings.max_eval_examples, seed)
    if not train_examples:
        raise ReforBertInputError(
            f"no training examples left: the carved dev split took all {len(splits.eval)} examples",
            train_file,
        )
    tokenizer = load_tokenizer(tokenizer_dir)
    train_encoded = task.encode(train_examples, tokenizer, settings.max_seq_length, training=True)
    if not train_encoded.model_inputs:
        # The Trainer would fail deep inside its sampler; say which filter emptied the split instead.
        reasons = ", ".join(f"{count} {reason}" for reason, count in task.dropped_in_training().items())
        raise ReforBertInputError(
            f"nothing to train on: all {len(train_examples)} training examples were dropped"
            + (f" ({reasons})" if reasons else ""),
            train_file,
        )
    eval_encoded = task.encode(eval_examples, tokenizer, settings.max_seq_length, training=False)
    return PreparedData(splits, train_examples, eval_examples, train_encoded, eval_encoded, tokenizer)


def override_attention(model: torch.nn.Module, attention: str | None, model_dir: Path) -> None:
    """ReforBERT's backends share their weights, so a model pretrained with LSH can be fine-tuned with
    exact attention (or "auto") where sequences are short and exact attention is the faster one."""
    if attention is None:
        return
    if getattr(model.config, "model_type", None) != "reforbert":
        raise ReforBertInputError("--attention applies to ReforBERT models only", model_dir)
    model.config.attention_backend = attention


def train_and_evaluate(
    task: Any,
    model: torch.nn.Module,
    data: PreparedData,
    settings: FinetuningSettings,
    logging_steps: int | None,
    progress: bool,
) -> Outcome:
    budget = None
    if settings.time_budget_minutes is not None:
        budget = TimeBudgetCallback(settings.time_budget_minutes * 60.0)
    with tempfile.TemporaryDirectory(prefix="reforbert-finetune-") as scratch:
        args = training_arguments(
            scratch,
            epochs=settings.epochs,
            max_steps=settings.max_steps,
            learning_rate=settings.learning_rate,
            per_device_batch=settings.per_device_batch,
            use_cuda=settings.use_cuda,
            use_bf16=settings.use_bf16,
            seed=settings.seed,
            logging_steps=logging_steps,
            progress=progress,
            group_by_length=settings.group_by_length,
        )
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=PaddingCollator(data.tokenizer.pad_token_id or 0),
            train_dataset=FeatureDataset(data.train_encoded.model_inputs),
            callbacks=[budget] if budget is not None else [],
        )
        started = time.monotonic()
        train_output = trainer.train()
        train_seconds = time.monotonic() - started

        # The Trainer groups evaluation batches by length too when training did, which would return
        # the predictions out of example order; score in the order of the examples.
        for name, value in batch_order_arguments(False).items():
            setattr(trainer.args, name, value)
        started = time.monotonic()
        predictions = trainer.predict(FeatureDataset(data.eval_encoded.model_inputs)).predictions
        # Trainer returns one array per logit output; QA models give (start, end).
        if isinstance(predictions, list):
            predictions = tuple(predictions)
        metrics = _to_builtin(task.score(data.eval_examples, data.eval_encoded, predictions))
        eval_seconds = time.monotonic() - started

    confusion_matrix = metrics.pop("confusion_matrix", None)
    if task.main_metric not in metrics:
        raise RuntimeError(f"task {task.name} did not report its main metric {task.main_metric!r}")
    stopped = bool(budget and budget.stopped_early)
    return Outcome(
        trainer, train_output.training_loss, metrics, confusion_matrix, train_seconds, eval_seconds, stopped
    )


def build_results(
    task: Any,
    data: PreparedData,
    outcome: Outcome,
    settings: FinetuningSettings,
    *,
    model_dir: Path,
    tokenizer_dir: Path,
    train_file: Path,
    dev_fraction: float | None,
) -> dict[str, Any]:
    """The ``results/<task>.json`` record: what was measured and exactly how (``reforbert report``
    renders it without guessing)."""
    state = outcome.trainer.state
    results: dict[str, Any] = {
        "task": task.name,
        "head": task.head,
        "main_metric": task.main_metric,
        "metrics": outcome.metrics,
        "split": {
            "kind": data.splits.kind,
            "description": data.splits.description,
            "train_file": str(train_file.resolve()),
            "eval_file": str(data.splits.eval_source.resolve()),
            "carved_dev_fraction": dev_fraction,
        },
        "eval_file_sha256": sha256_of(data.splits.eval_source),
        "train_file_sha256": sha256_of(train_file),
        "num_train_examples": len(data.train_examples),
        "num_eval_examples": len(data.eval_examples),
        "num_train_features": len(data.train_encoded.model_inputs),
        "num_eval_features": len(data.eval_encoded.model_inputs),
        "model": describe_model(outcome.trainer.model, model_dir),
        "tokenizer_path": str(tokenizer_dir.resolve()),
        "hyperparameters": settings.record(),
        "steps": state.global_step,
        "planned_steps": state.max_steps,
        "epochs_done": state.epoch,
        "stopped_by_time_budget": outcome.stopped_by_time_budget,
        "train_loss": outcome.train_loss,
        "train_seconds": round(outcome.train_seconds, 3),
        "eval_seconds": round(outcome.eval_seconds, 3),
        "device": device_description(settings.use_cuda, settings.world_size),
        "world_size": settings.world_size,
        "log_history": _to_builtin(state.log_history),
        "versions": _versions(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if outcome.confusion_matrix is not None:
        results["confusion_matrix"] = outcome.confusion_matrix
        results["label_names"] = list(task.label_names)
    return results


def write_outputs(
    results_path: Path, results: dict[str, Any], output_dir: str | Path | None, model: Any, tokenizer: Any
) -> None:
    with atomic_file(results_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    if output_dir is not None:
        with atomic_directory(output_dir) as folder:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)


def finetune(
    task_name: str,
    model_dir: str | Path,
    train_file: str | Path,
    eval_file: str | Path | None = None,
    *,
    output_dir: str | Path | None = None,
    results_dir: str | Path = "results",
    tokenizer_dir: str | Path | None = None,
    dev_fraction: float | None = None,
    eval_split_name: str | None = None,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    epochs: float | None = None,
    max_steps: int | None = None,
    time_budget_minutes: float | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    max_seq_length: int | None = None,
    seed: int = 42,
    group_by_length: bool = False,
    bf16: str | bool = "auto",
    attention: str | None = None,
    logging_steps: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on ``task_name``, evaluate, and write ``results_dir/<task>.json``.

    The evaluation set is ``eval_file`` or, when the benchmark ships no usable dev file, a
    ``dev_fraction`` carved out of ``train_file`` by ``seed``. Settings left None take the task's
    published defaults. Returns the results record; ``output_dir`` also receives the fine-tuned model.
    """
    task = resolve_task(task_name)
    model_dir, tokenizer_dir, train_file, eval_file = check_paths(
        model_dir, tokenizer_dir, train_file, eval_file
    )
    check_evaluation_source(task.name, eval_file, dev_fraction)
    settings = resolve_settings(
        task,
        bf16,
        epochs=epochs,
        max_steps=max_steps,
        time_budget_minutes=time_budget_minutes,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        max_train_examples=max_train_examples,
        max_eval_examples=max_eval_examples,
        seed=seed,
        group_by_length=group_by_length,
    )
    results_path = Path(results_dir) / f"{task.name}.json"
    # Checked before training so that a long run never ends unable to write its result.
    refuse_to_overwrite(results_path, overwrite)
    if output_dir is not None:
        refuse_to_overwrite(output_dir, overwrite)

    data = prepare_data(task, train_file, eval_file, tokenizer_dir, settings, dev_fraction, eval_split_name)
    set_seed(seed)  # the classifier head is initialised with this seed
    model = load_model(task, model_dir)
    check_tokenizer_fits_model(data.tokenizer, model, model_dir)
    override_attention(model, attention, model_dir)
    outcome = train_and_evaluate(task, model, data, settings, logging_steps, progress)
    results = build_results(
        task,
        data,
        outcome,
        settings,
        model_dir=model_dir,
        tokenizer_dir=tokenizer_dir,
        train_file=train_file,
        dev_fraction=dev_fraction,
    )
    if outcome.trainer.is_world_process_zero():
        write_outputs(results_path, results, output_dir, outcome.trainer.model, data.tokenizer)
    return results


def _versions() -> dict[str, str]:
    return {
        "reforbert": reforbert.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.cli import add_deprecated_alias, add_example

    add = parser.add_argument
    add("task", help=f"The benchmark to fine-tune on: {', '.join(TASKS)}.")
    add("--model", required=True, help="The pretrained model folder (e.g. RUN/model).")
    add("--train", required=True, help="The training file, in the benchmark's own format.")
    add("--eval", help="The evaluation file (dev or test), in the benchmark's own format.")
    add("--tokenizer", help="The tokenizer folder (default: the model folder).")
    add("--dev-fraction", type=float, help="Carve this fraction of --train out as the evaluation split.")
    add("--eval-split-name", help="The split's name in the results table (default: from the file name).")
    add("--results-dir", default="results", help="The folder for TASK.json (default: results).")
    output = add("--output", "-o", help="Also save the fine-tuned model (safetensors) in this folder.")
    add_deprecated_alias(parser, output, "--output-dir")
    add("--max-train-examples", type=int, help="Train on a seeded random subset of this many examples.")
    add("--max-eval-examples", type=int, help="Score a seeded random subset of this many examples.")
    add("--epochs", type=float, help="The number of epochs (default: the task's published setting).")
    add("--max-steps", type=int, help="Stop after this many optimizer steps.")
    budget = add(
        "--time-budget-minutes",
        type=float,
        metavar="MINUTES",
        help="Stop training after this many minutes; the evaluation still runs.",
    )
    add_deprecated_alias(parser, budget, "--time-budget")
    add("--learning-rate", type=float, help="The peak learning rate (default: the task's published setting).")
    add("--batch-size", type=int, help="The global batch size (default: the task's published setting).")
    max_seq_len = add(
        "--max-seq-len", type=int, help="The longest input in tokens (default: the task's published setting)."
    )
    add_deprecated_alias(parser, max_seq_len, "--max-seq-length")
    add("--seed", type=int, default=42, help="The seed of subsets, carving and training (default 42).")
    add(
        "--group-by-length",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Batch training examples of similar length together (batches still in random order): "
        "less padding to compute, so faster where lengths vary, but batches are less mixed, which "
        "can cost accuracy (default: random batches).",
    )
    add(
        "--bf16",
        choices=BF16_CHOICES,
        default="auto",
        help="Use bf16 autocast (default auto: on GPUs that support it and on CPUs with bf16 units, AMX or "
        "AVX512-BF16; other CPUs only emulate bf16, far slower than fp32).",
    )
    add(
        "--attention",
        choices=ATTENTION_BACKENDS,
        help="Override a ReforBERT model's attention backend for fine-tuning and evaluation "
        "(default: the backend saved in its config).",
    )
    add("--logging-steps", type=int, help="Log the training loss every this many steps (default 50).")
    add("--overwrite", action="store_true", help="Replace an existing results file and output folder.")
    add("--no-progress", action="store_true", help="Hide the progress bar.")
    add_example(
        parser,
        "reforbert finetune korsts --model run/model --train data/korsts/sts-train.tsv \\",
        "    --eval data/korsts/sts-dev.tsv --time-budget-minutes 30",
    )


def run(args: argparse.Namespace) -> int:
    results = finetune(
        args.task,
        args.model,
        args.train,
        args.eval,
        output_dir=args.output,
        results_dir=args.results_dir,
        tokenizer_dir=args.tokenizer,
        dev_fraction=args.dev_fraction,
        eval_split_name=args.eval_split_name,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples,
        epochs=args.epochs,
        max_steps=args.max_steps,
        time_budget_minutes=args.time_budget_minutes,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_len,
        seed=args.seed,
        group_by_length=args.group_by_length,
        bf16=args.bf16,
        attention=args.attention,
        logging_steps=args.logging_steps,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only the first process reports
    metrics = ", ".join(
        f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value:,}"
        for name, value in results["metrics"].items()
        if isinstance(value, (int, float))
    )
    print(
        f"{results['task']}: {metrics} on {results['split']['description']} "
        f"({results['num_eval_examples']:,} examples, {results['steps']} steps)"
    )
    print(f"wrote {Path(args.results_dir) / (results['task'] + '.json')}")
    return 0
