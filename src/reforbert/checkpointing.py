"""Pretraining checkpoints: writing them atomically, finding the complete ones, restoring a run exactly.

Folder ``RUN/checkpoints/step-N/``:
  ``model.safetensors`` + ``config.json``  model weights and config;
  ``optimizer.safetensors``                 AdamW moments and step counts, keyed ``state.<param>.<name>``;
  ``rng.safetensors``                       torch CPU (and CUDA) generator states;
  ``trainer_state.json``                    step, data position, tokens seen, scheduler, loss scaler,
                                            optimizer param groups, and the run's settings.

Every file is safetensors or JSON, so resuming never unpickles anything. A checkpoint is written
under a temporary name (``.step-N.*.tmp``) and renamed when complete, so a folder named ``step-N``
always holds a whole checkpoint. Before resuming, :func:`newest_usable_checkpoint` checks each folder
(files present, safetensors intact, trainer state complete, written for this model and vocabulary) and
falls back from a damaged newest one to the newest sound one, saying why.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_directory

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
CHECKPOINT_FILES = (
    "model.safetensors",
    "config.json",
    "optimizer.safetensors",
    "rng.safetensors",
    "trainer_state.json",
)
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
TRAINER_STATE_KEYS = ("step", "scheduler", "optimizer_param_groups", "settings")
# Model config fields that fix the weights' shapes: a checkpoint that differs in one was written by
# another model (or for another vocabulary) and cannot continue this run.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "type_vocab_size",
    "axial_position_shape",
)


@dataclasses.dataclass
class TrainingState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # index into this epoch's permutation where the next global batch starts
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0


@dataclasses.dataclass
class TrainingObjects:
    """The stateful objects a checkpoint holds, besides :class:`TrainingState`.

    ``model`` is the plain module (not a distributed or compiled wrapper, which would rename its
    weights); ``scaler`` is the fp16 loss scaler, or None when no loss scaling is used.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any = None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Temporary folders (``.step-N.*.tmp``) never match."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for entry in folder.iterdir():
            match = CHECKPOINT_PATTERN.match(entry.name)
            if match and entry.is_dir() and all((entry / name).is_file() for name in CHECKPOINT_FILES):
                found.append((int(match.group(1)), entry))
    return sorted(found)


def step_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoints/step-N`` folder, oldest first, whether complete or damaged."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(CHECKPOINT_PATTERN.match(entry.name), entry) for entry in folder.iterdir() if entry.is_dir()]
    return sorted((int(match.group(1)), entry) for match, entry in found if match)


def checkpoint_problem(folder: Path, expected_config: dict[str, Any]) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when it can.

    ``expected_config`` holds the model config values (of :data:`SHAPE_FIELDS`) the run needs, such as
    the vocabulary size of --vocab. The tensor files are checked by their safetensors headers, which
    also catch a file cut short; nothing is loaded.
    """
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    for name in TENSOR_FILES:
        try:
            with safe_open(str(folder / name), "pt"):
                pass
        except (SafetensorError, OSError) as error:
            return f"{name} is truncated or not a safetensors file ({error})"
    try:
        trainer_state = read_trainer_state(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ReforBertInputError, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"unreadable ({error})"
    lacking = [key for key in TRAINER_STATE_KEYS if key not in trainer_state]
    if lacking:
        return f"trainer_state.json lacks {', '.join(lacking)}"
    changed = [
        f"{key} {config.get(key)!r} instead of {value!r}"
        for key, value in expected_config.items()
        if isinstance(config, dict) and config.get(key) != value
    ]
    if not isinstance(config, dict) or changed:
        return "written for another model or vocabulary (" + ", ".join(changed or ["config.json"]) + ")"
    return None


def newest_usable_checkpoint(run_dir: Path, expected_config: dict[str, Any]) -> tuple[Path, list[str]]:
    """The newest checkpoint fit to resume from, and why each newer one was passed over.

    Never returns nothing: without a usable checkpoint it raises, so a run never restarts from
    scratch by accident.
    """
    skipped = []
    for _, folder in reversed(step_folders(run_dir)):
        problem = checkpoint_problem(folder, expected_config)
        if problem is None:
            return folder, skipped
        skipped.append(f"{folder.name}: {problem}")
    reasons = f" ({'; '.join(skipped)})" if skipped else ""
    raise ReforBertInputError(
        f"--resume was given but there is no complete checkpoint to resume from{reasons}",
        Path(run_dir) / "checkpoints",
    )


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
    """The inverse of :func:`optimizer_state_to_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = tensor
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(
    run_dir: Path, state: TrainingState, objects: TrainingObjects, settings: dict[str, Any], keep: int
) -> Path:
    """Write ``checkpoints/step-N`` atomically, then delete the oldest beyond ``keep`` (0 keeps all)."""
    final = Path(run_dir) / "checkpoints" / f"step-{state.step}"
    with atomic_directory(final) as tmp:
        save_model(objects.model, str(tmp / "model.safetensors"))
        objects.model.config.to_json_file(str(tmp / "config.json"))
        tensors, param_groups = optimizer_state_to_tensors(objects.optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        trainer_state = {
            **dataclasses.asdict(state),
            "scheduler": objects.scheduler.state_dict(),
            "scaler": objects.scaler.state_dict() if objects.scaler is not None else None,
            "optimizer_param_groups": param_groups,
            "settings": settings,
        }
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1, default=float))
    if keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``trainer_state.json``; an unreadable one is an input error naming the file."""
    path = Path(checkpoint) / "trainer_state.json"
    try:
        trainer_state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReforBertInputError(
            f"unreadable trainer state ({type(error).__name__}: {error})", path
        ) from None
    if not isinstance(trainer_state, dict):
        raise ReforBertInputError("trainer state is not a JSON object", path)
    return trainer_state


def load_checkpoint(checkpoint: Path, objects: TrainingObjects) -> TrainingState:
    """Restore everything :func:`save_checkpoint` wrote; a damaged or foreign checkpoint is an input error."""
    try:
        return _restore(Path(checkpoint), objects)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        raise ReforBertInputError(
            f"cannot resume from this checkpoint ({type(error).__name__}: {error})", checkpoint
        ) from None


def _restore(checkpoint: Path, objects: TrainingObjects) -> TrainingState:
    load_model(objects.model, str(checkpoint / "model.safetensors"))
    trainer_state = read_trainer_state(checkpoint)
    optimizer_tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    objects.optimizer.load_state_dict(
        optimizer_state_from_tensors(optimizer_tensors, trainer_state["optimizer_param_groups"])
    )
    objects.scheduler.load_state_dict(trainer_state["scheduler"])
    if objects.scaler is not None and trainer_state.get("scaler"):
        objects.scaler.load_state_dict(trainer_state["scaler"])
    rng = load_file(str(checkpoint / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda_states = [rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return training_state_from(trainer_state, checkpoint / "trainer_state.json")


def training_state_from(trainer_state: dict[str, Any], path: Path) -> TrainingState:
    """The :class:`TrainingState` fields of a trainer state, each checked to be a number >= 0 of its type.

    A value edited to null or a string would load and only fail steps later, far from its cause.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(TrainingState):
        if field.name not in trainer_state:
            continue
        value = trainer_state[field.name]
        wanted = (int,) if field.type in ("int", int) else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted) or value < 0:
            raise ReforBertInputError(
                f"trainer state field {field.name!r} must be a number >= 0, got {value!r}", path
            )
        values[field.name] = value
    return TrainingState(**values)
