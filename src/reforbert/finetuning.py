"""Fine-tune a pretrained ReforBERT (or any Hugging Face encoder) on one Korean benchmark and score it.

The benchmark-specific parts (reading files, encoding, scoring) live in ``reforbert.tasks``; this
module only wires them to the Hugging Face ``Trainer``, which runs unchanged on CPU, one GPU, or
several GPUs under ``torchrun``. Every run ends in one ``results/<task>.json`` that records what was
measured and exactly how, so that ``reforbert report`` can render it without guessing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
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
from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_directory, atomic_file, refuse_to_overwrite, sha256_of
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


def check_positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ReforBertInputError(f"--{name.replace('_', '-')} must be positive, got {value}")


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

    Sequence keys are right-padded (input ids with the pad id, token labels with -100 so the loss
    ignores them); scalar labels become a tensor whose dtype follows the values (float -> regression).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        padding_value = {"input_ids": self.pad_token_id, "labels": -100}
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
    kwargs: dict[str, Any] = {}
    if task.head != "question-answering":
        kwargs["num_labels"] = task.num_labels
    if task.label_names:
        kwargs["id2label"] = dict(enumerate(task.label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(task.label_names)}
    try:
        return auto_class.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ReforBertInputError(f"cannot load a model from this folder: {error}", model_dir) from error


def load_tokenizer(tokenizer_dir: Path) -> Any:
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError, KeyError) as error:
        message = f"cannot load a tokenizer from this folder: {error}"
        raise ReforBertInputError(message, tokenizer_dir) from error


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AMX or AVX512-BF16); emulated bf16 is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_bf16(choice: str | bool, use_cuda: bool) -> bool:
    if isinstance(choice, bool):
        return choice
    if choice not in BF16_CHOICES:
        raise ReforBertInputError(f"bf16 must be one of {', '.join(BF16_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice == "on"
    if use_cuda:
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


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
) -> Any:
    """AdamW with linear decay and no warmup, as the published Korean baselines were fine-tuned."""
    return TrainingArguments(
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


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


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
    bf16: str | bool = "auto",
    attention: str | None = None,
    logging_steps: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on ``task_name``, evaluate, and write ``results_dir/<task>.json``.

    The evaluation set is ``eval_file`` or, when the benchmark ships no usable dev file, a
    ``dev_fraction`` carved out of ``train_file`` by ``seed``. Returns the results dictionary.
    """
    task = resolve_task(task_name)
    model_dir = _require_model_dir(model_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else model_dir
    if not tokenizer_dir.is_dir():
        raise ReforBertInputError("tokenizer folder not found", tokenizer_dir)
    train_file = _require_file(train_file, "train file")
    eval_file = _require_file(eval_file, "eval file") if eval_file is not None else None
    check_evaluation_source(task.name, eval_file, dev_fraction)
    check_positive(
        epochs=epochs,
        max_steps=max_steps,
        time_budget=time_budget_minutes,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
    )
    results_path = Path(results_dir) / f"{task.name}.json"
    # Checked before training so that a long run never ends unable to write its result.
    refuse_to_overwrite(results_path, overwrite)
    if output_dir is not None:
        refuse_to_overwrite(output_dir, overwrite)

    defaults = task.defaults
    epochs = defaults.epochs if epochs is None else epochs
    learning_rate = defaults.learning_rate if learning_rate is None else learning_rate
    batch_size = defaults.batch_size if batch_size is None else batch_size
    max_seq_length = defaults.max_seq_length if max_seq_length is None else max_seq_length

    splits = load_splits(task, train_file, eval_file, dev_fraction, eval_split_name, seed)
    train_examples = subsample(splits.train, max_train_examples, seed)
    eval_examples = subsample(splits.eval, max_eval_examples, seed)
    if not train_examples:
        raise ReforBertInputError("no training examples left after carving the dev split", train_file)

    tokenizer = load_tokenizer(tokenizer_dir)
    train_encoded = task.encode(train_examples, tokenizer, max_seq_length, training=True)
    eval_encoded = task.encode(eval_examples, tokenizer, max_seq_length, training=False)

    set_seed(seed)  # the classifier head is initialised with this seed
    model = load_model(task, model_dir)
    if attention is not None:
        # ReforBERT's backends share their weights, so a model pretrained with LSH can be fine-tuned with
        # exact attention (or "auto") where sequences are short and exact attention is the faster one.
        if getattr(model.config, "model_type", None) != "reforbert":
            raise ReforBertInputError("--attention applies to ReforBERT models only", model_dir)
        model.config.attention_backend = attention

    use_cuda = torch.cuda.is_available()
    use_bf16 = resolve_bf16(bf16, use_cuda)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # The published batch sizes are global; under torchrun split them over the processes.
    per_device_batch = max(1, batch_size // world_size)
    callbacks = []
    budget_callback = None
    if time_budget_minutes is not None:
        budget_callback = TimeBudgetCallback(time_budget_minutes * 60.0)
        callbacks.append(budget_callback)

    with tempfile.TemporaryDirectory(prefix="reforbert-finetune-") as scratch:
        args = training_arguments(
            scratch,
            epochs=epochs,
            max_steps=max_steps,
            learning_rate=learning_rate,
            per_device_batch=per_device_batch,
            use_cuda=use_cuda,
            use_bf16=use_bf16,
            seed=seed,
            logging_steps=logging_steps,
            progress=progress,
        )
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=PaddingCollator(tokenizer.pad_token_id or 0),
            train_dataset=FeatureDataset(train_encoded.model_inputs),
            callbacks=callbacks,
        )
        started = time.monotonic()
        train_output = trainer.train()
        train_seconds = time.monotonic() - started

        started = time.monotonic()
        prediction = trainer.predict(FeatureDataset(eval_encoded.model_inputs))
        predictions = prediction.predictions
        # Trainer returns one array per logit output; QA models give (start, end).
        if isinstance(predictions, list):
            predictions = tuple(predictions)
        metrics = _to_builtin(task.score(eval_examples, eval_encoded, predictions))
        eval_seconds = time.monotonic() - started

    confusion_matrix = metrics.pop("confusion_matrix", None)
    if task.main_metric not in metrics:
        raise RuntimeError(f"task {task.name} did not report its main metric {task.main_metric!r}")

    results: dict[str, Any] = {
        "task": task.name,
        "head": task.head,
        "main_metric": task.main_metric,
        "metrics": metrics,
        "split": {
            "kind": splits.kind,
            "description": splits.description,
            "train_file": str(train_file.resolve()),
            "eval_file": str(splits.eval_source.resolve()),
            "carved_dev_fraction": dev_fraction,
        },
        "eval_file_sha256": sha256_of(splits.eval_source),
        "train_file_sha256": sha256_of(train_file),
        "num_train_examples": len(train_examples),
        "num_eval_examples": len(eval_examples),
        "num_train_features": len(train_encoded.model_inputs),
        "num_eval_features": len(eval_encoded.model_inputs),
        "model": describe_model(trainer.model, model_dir),
        "tokenizer_path": str(tokenizer_dir.resolve()),
        "hyperparameters": {
            "optimizer": "AdamW",
            "lr_schedule": "linear decay, no warmup",
            "learning_rate": learning_rate,
            "weight_decay": WEIGHT_DECAY,
            "adam_epsilon": ADAM_EPSILON,
            "max_grad_norm": MAX_GRAD_NORM,
            "batch_size": per_device_batch * world_size,
            "per_device_batch_size": per_device_batch,
            "epochs": epochs,
            "max_steps": max_steps,
            "time_budget_minutes": time_budget_minutes,
            "max_seq_length": max_seq_length,
            "max_train_examples": max_train_examples,
            "max_eval_examples": max_eval_examples,
            "seed": seed,
            "bf16": use_bf16,
        },
        "steps": trainer.state.global_step,
        "planned_steps": trainer.state.max_steps,
        "epochs_done": trainer.state.epoch,
        "stopped_by_time_budget": bool(budget_callback and budget_callback.stopped_early),
        "train_loss": train_output.training_loss,
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "device": device_description(use_cuda, world_size),
        "world_size": world_size,
        "log_history": _to_builtin(trainer.state.log_history),
        "versions": _versions(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if confusion_matrix is not None:
        results["confusion_matrix"] = confusion_matrix
        results["label_names"] = list(task.label_names)

    if trainer.is_world_process_zero():
        with atomic_file(results_path, "w", encoding="utf-8") as handle:
            json.dump(results, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        if output_dir is not None:
            with atomic_directory(output_dir) as folder:
                trainer.model.save_pretrained(folder, safe_serialization=True)
                tokenizer.save_pretrained(folder)
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
    parser.add_argument("task", help=f"benchmark: {', '.join(TASKS)}")
    parser.add_argument("--model", required=True, help="pretrained model folder (e.g. RUN/model)")
    parser.add_argument("--train", required=True, help="training file in the benchmark's own format")
    parser.add_argument("--eval", help="evaluation file (dev or test) in the benchmark's own format")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    parser.add_argument("--dev-fraction", type=float, help="carve this fraction of --train as the dev split")
    parser.add_argument("--eval-split-name", help="split name for the table (default: from the file name)")
    parser.add_argument("--results-dir", default="results", help="folder for <task>.json (default: results)")
    parser.add_argument("--output-dir", help="also save the fine-tuned model here (safetensors)")
    parser.add_argument("--max-train-examples", type=int, help="train on a seeded random subset of this size")
    parser.add_argument("--max-eval-examples", type=int, help="score a seeded random subset of this size")
    parser.add_argument("--epochs", type=float, help="default: the task's published setting")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop training after MINUTES")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--max-seq-length", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", choices=BF16_CHOICES, default="auto", help="bf16 autocast (default: auto)")
    parser.add_argument(
        "--attention",
        choices=("lsh", "full", "auto"),
        help="override a ReforBERT model's attention backend for fine-tuning and evaluation "
        "(default: the backend saved in its config)",
    )
    parser.add_argument("--logging-steps", type=int, help="log the training loss every N steps (default 50)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    results = finetune(
        args.task,
        args.model,
        args.train,
        args.eval,
        output_dir=args.output_dir,
        results_dir=args.results_dir,
        tokenizer_dir=args.tokenizer,
        dev_fraction=args.dev_fraction,
        eval_split_name=args.eval_split_name,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples,
        epochs=args.epochs,
        max_steps=args.max_steps,
        time_budget_minutes=args.time_budget,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        seed=args.seed,
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
