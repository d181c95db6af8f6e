"""The settings of a pretraining run: one dataclass that the command line, the code and the run folder share.

:class:`PretrainingArguments` lists every setting of ``reforbert pretrain`` with its type, its default and
a help sentence. The command line is generated from it, :func:`reforbert.pretraining.run_pretraining`
reads it, and ``RUN/run_settings.json`` records it (with the values resolved at start-up, such as the
precision that ``auto`` chose). Adding a setting means adding one field here.

A recipe (``--recipe NAME``) is a named set of defaults from :data:`RECIPES`; flags given explicitly
override it, and ``run_settings.json`` records the values the run actually used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from reforbert.configuration_reforbert import ATTENTION_BACKENDS, PRESETS
from reforbert.errors import ReforBertInputError

# Named sets of defaults. Each maps field names of PretrainingArguments to values; ``config_overrides``
# entries are merged with the ones given by ``--config`` (which win).
_BUDGET_COMMON: dict[str, Any] = {
    "preset": "mini",
    "attention": "full",
    "reversible": False,
    "config_overrides": {"hidden_dropout_prob": 0.0},
    # bf16 where the CPU or GPU computes it natively (every budget stage so far ran in bf16), else fp32.
    "precision": "auto",
    "schedule": "linear",
}
RECIPES: dict[str, dict[str, Any]] = {
    # The one-hour budget recipe: a length curriculum on a 2-core CPU (58.8 minutes: 16.5 + 39.5 + 2.9),
    # the fourth release (20.1% at [MASK]), one recipe per stage, each later stage started with --init-from
    # the previous stage's model. Not the released checkpoint's line: every model descending from this
    # stage 1 (25% masked) fine-tunes on KorSTS at the level of random weights, where the long stage 2s
    # from the released line's stage 1 (15% masked) reach 30-40 (README.md, "Why the release left the
    # budget recipe's line"). This recipe with stage 1 at 15% instead, all else equal, reached 17.7% in the
    # hour and KorSTS 11.8 and 26.0 (two seeds): masking is at most part of that failure.
    # At length 128 every recipe tried from random weights stayed on the unigram plateau for 10-12 minutes;
    # at length 32 the model leaves it after about 1,000 steps (experiments/kowiki_mini/README.md has the
    # curves). Every stage masks 25% of the tokens rather than 15%: in stage 2 it reached after 500 steps a
    # held-out loss that 15% reached only between steps 500 and 750 (40% did worse than 25%); in stage 1 it
    # led 15% at every evaluation after the first (9.9% against 7.5% at [MASK] at step 4,000).
    "budget-stage1-len32": {
        **_BUDGET_COMMON,
        "max_seq_len": 32,
        "mlm_probability": 0.25,
        "global_batch_size": 64,
        "micro_batch_size": 64,
        "learning_rate": 2e-3,
        "warmup_steps": 200,
        "max_steps": 6000,
    },
    # 2e-3 lies between two peak rates that did equally well over six minutes from the stage-1 model
    # (1e-3 and 3e-3). Not compiled: with 25% masked, a compiled step took 0.626 s against 0.587 s eager
    # on the 2-core CPU (80-step runs, one session). The 3,900-step schedule was sized from that 0.587 s;
    # the fourth release's stage 2 took 0.650 s a step (median) and its 39.5 minutes stopped it at step 3,545,
    # the learning rate at 9% of its peak.
    "budget-stage2-len128": {
        **_BUDGET_COMMON,
        "max_seq_len": 128,
        "mlm_probability": 0.25,
        "global_batch_size": 64,
        "micro_batch_size": 64,
        "learning_rate": 2e-3,
        "warmup_steps": 100,
        "max_steps": 3900,
    },
    # Teaches positions 128-511, for fine-tuning on longer inputs (KorQuAD windows). It costs a little at
    # length 128: on the held-out instances the fourth release scored 20.8% at [MASK] before this stage
    # and 20.1% after it, the fifth 26.0% and 24.6%, the sixth 23.7% and 23.0%, the seventh 28.6% and 27.5%.
    "budget-stage3-len512": {
        **_BUDGET_COMMON,
        "max_seq_len": 512,
        "mlm_probability": 0.25,
        "global_batch_size": 32,
        "micro_batch_size": 16,
        "learning_rate": 5e-4,
        "warmup_steps": 30,
        "max_steps": 120,
    },
}

# Settings that fix the data order, the masking and the loss: changing them on --resume would silently
# change the run. The second mapping gives the value a checkpoint written before a setting existed holds.
RESUME_INVARIANTS = (
    "global_batch_size",
    "seed",
    "mlm_probability",
    "nsp",
    "max_seq_len",
    "data",
    "whole_word_mask",
)
INVARIANT_DEFAULTS: dict[str, Any] = {"whole_word_mask": False}

# Flags that set one model-config field each; --config KEY=VALUE sets any field.
CONFIG_SHORTCUTS = {
    "attention": "attention_backend",
    "reversible": "reversible",
    "ff_chunk_size": "feed_forward_chunk_size",
    "bucket_size": "lsh_bucket_size",
    "num_hashes": "lsh_num_hashes",
}

EXAMPLES = (
    "reforbert pretrain --recipe budget-stage1-len32 --data train32/ --vocab vocab/ --output runs/s1 "
    "--time-budget-minutes 17",
    "reforbert pretrain --recipe budget-stage2-len128 --init-from runs/s1/model --data train128/ "
    "--vocab vocab/ --output runs/s2 --time-budget-minutes 39.5",
)


def _field(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A dataclass field whose metadata carries its help sentence and command-line details.

    ``cli`` keys: ``flags`` (extra spellings such as ``-o``), ``deprecated`` (old spellings, hidden
    from --help), ``choices``, ``metavar``, ``required`` (on the command line), ``negatable``.
    """
    metadata = {"help": help, **cli}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class PretrainingArguments:
    """Every setting of a pretraining run; see each field's help (``reforbert pretrain --help``)."""

    # Inputs and outputs
    data: str | None = _field(
        None,
        "The pretraining data: a shard folder or the JSON-lines files of `reforbert pretraining-data`.",
        required=True,
    )
    vocab: str | None = _field(
        None,
        "The vocabulary folder made by `reforbert vocab`; its tokenizer files are copied into the run's "
        "model folder.",
        required=True,
    )
    output: str | None = _field(
        None,
        # Checked by validate() rather than by argparse, which would not count the old spelling.
        "The run folder to create (checkpoints, metrics, final model); required.",
        flags=["-o"],
        deprecated=["--output-dir"],
    )
    recipe: str | None = _field(
        None, "A named set of defaults that explicit flags override.", choices=list(RECIPES), metavar="NAME"
    )
    init_from: str | None = _field(
        None,
        "Start a new run (fresh optimizer, schedule and data order) from the weights and config of a saved "
        "model folder, such as RUN/model of an earlier run at a shorter --max-seq-len.",
        metavar="MODEL_DIR",
    )
    resume: bool = _field(False, "Continue the run in --output from its latest complete checkpoint.")
    overwrite: bool = _field(False, "Replace an existing run in --output.")
    # The model
    preset: str = _field("mini", "The model size to start from.", choices=list(PRESETS))
    attention: str | None = _field(
        None,
        "The attention backend; auto uses full attention up to the config's full_attention_max_length "
        "and LSH beyond.",
        choices=list(ATTENTION_BACKENDS),
    )
    reversible: bool | None = _field(
        None,
        "Use reversible residual layers, which recompute activations in the backward pass to save memory.",
        negatable=True,
    )
    ff_chunk_size: int | None = _field(
        None,
        "Run the feed-forward layer over this many positions at a time (0 runs it over the whole sequence).",
    )
    bucket_size: int | None = _field(None, "The LSH attention bucket size.")
    num_hashes: int | None = _field(None, "The number of LSH hashing rounds.")
    config_overrides: dict[str, Any] = _field(
        {},
        "Set any other model config field, e.g. --config hidden_dropout_prob=0.0; may be repeated.",
        flags=["--config"],
        metavar="KEY=VALUE",
    )
    # The data and the objective
    max_seq_len: int = _field(
        512, "The longest example accepted, in tokens.", deprecated=["--max-seq-length"]
    )
    mlm_probability: float = _field(0.15, "The fraction of tokens masked for MLM.")
    eval_mlm_probability: float = _field(
        0.15,
        "The fraction masked in held-out evaluation; fixed apart from --mlm-probability so that runs "
        "trained at different masking rates are scored on the same task.",
    )
    whole_word_mask: bool = _field(
        False, "Mask whole words: all pieces of a word are masked together or not at all."
    )
    nsp: bool = _field(True, "Train next-sentence prediction alongside MLM (--no-nsp trains MLM only).")
    data_workers: int = _field(
        0,
        "Processes that read, mask and collate the coming steps' batches while the model trains (0: the "
        "training loop makes each batch itself, between steps). The batches are the same either way; "
        "on a GPU a few workers keep a small model from waiting for its data.",
    )
    seed: int = _field(0, "The seed for initialisation, data order, masking and dropout.")
    # Optimisation
    micro_batch_size: int = _field(32, "Examples per forward/backward pass on each process.")
    global_batch_size: int = _field(
        128, "Examples per optimizer step over all processes, reached by gradient accumulation."
    )
    learning_rate: float = _field(1e-4, "The peak learning rate of AdamW.")
    warmup_steps: int | None = _field(
        None, "Steps of linear warm-up; by default 10% of the schedule (at most 1000)."
    )
    schedule: str = _field(
        "linear", "How the learning rate decays after warm-up.", choices=["linear", "cosine", "constant"]
    )
    weight_decay: float = _field(0.01, "AdamW weight decay, not applied to biases and LayerNorm weights.")
    max_grad_norm: float = _field(1.0, "Clip the gradient norm to this value (0 disables it).")
    precision: str = _field(
        "auto",
        "Numeric precision: bf16 or fp16 autocast (fp16 with loss scaling, CUDA only) or fp32; auto picks "
        "bf16 (fp16 where a GPU lacks it) on GPUs and on CPUs with bf16 units (AMX or AVX512-BF16), fp32 "
        "on other CPUs.",
        choices=["auto", "fp32", "bf16", "fp16"],
    )
    compile: bool = _field(
        False,
        "Compile the model with torch.compile before training (--no-compile turns off a recipe's choice).",
        negatable=True,
    )
    # When to stop
    max_steps: int | None = _field(None, "Stop after this many optimizer steps.")
    max_tokens: int | None = _field(None, "Stop after this many non-padding tokens.")
    time_budget_minutes: float | None = _field(
        None, "Stop (and save) after this many minutes of this invocation.", deprecated=["--time-budget"]
    )
    fit_schedule_to_time_budget: bool = _field(
        False,
        "Size the learning-rate schedule to --time-budget-minutes: after the first steps of warm-up, the "
        "run fixes its length from its own pace so that the rate decays to its end before the deadline "
        "(never beyond --max-steps; a resumed run keeps the length). Needs --warmup-steps.",
    )
    # Checkpoints, evaluation and logging
    save_steps: int = _field(100, "Write a checkpoint every this many steps.")
    save_total_limit: int = _field(3, "Keep only this many most recent checkpoints (0 keeps them all).")
    eval_steps: int | None = _field(
        None, "Evaluate every this many steps; by default as often as checkpoints."
    )
    eval_data: str | None = _field(
        None, "Held-out pretraining data; without it a small fraction of --data is held out."
    )
    eval_fraction: float = _field(0.01, "The fraction of --data held out when there is no --eval-data.")
    eval_max_examples: int = _field(2000, "Evaluate on at most this many held-out examples.")
    peak_tflops: float | None = _field(
        None, "The device's peak TFLOP/s used for MFU, instead of the built-in per-device estimate."
    )
    log_every: int = _field(1, "Write a metrics line every this many steps.")
    progress: bool = _field(True, "Show a progress bar on the terminal.")

    @classmethod
    def resolve(cls, recipe: str | None = None, **given: Any) -> PretrainingArguments:
        """The arguments of ``recipe`` (if any) with the ``given`` values on top."""
        if recipe is not None and recipe not in RECIPES:
            raise ReforBertInputError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        values = dict(RECIPES[recipe]) if recipe is not None else {}
        overrides = dict(given.pop("config_overrides", None) or {})
        for shortcut, config_key in CONFIG_SHORTCUTS.items():
            # An explicit --config for a field beats the recipe's shortcut flag for it.
            if config_key in overrides and shortcut not in given:
                values.pop(shortcut, None)
        values.update(given)
        values["config_overrides"] = {**values.get("config_overrides", {}), **overrides}
        return cls(recipe=recipe, **values)

    def validate(self) -> None:
        """Refuse settings that cannot work, before anything is read or written."""
        for name in ("data", "vocab", "output"):
            if getattr(self, name) is None:
                raise ReforBertInputError(f"--{name} is required")
        for name in ("micro_batch_size", "global_batch_size", "save_steps", "max_seq_len", "log_every"):
            value = getattr(self, name)
            if value < 1:
                raise ReforBertInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("mlm_probability", "eval_mlm_probability"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ReforBertInputError(f"--{name.replace('_', '-')} must be in (0, 1), got {value}")
        if self.data_workers < 0:
            raise ReforBertInputError(f"--data-workers must be 0 or more, got {self.data_workers}")
        if self.fit_schedule_to_time_budget:
            needed = [
                flag
                for flag, value in (
                    ("--time-budget-minutes", self.time_budget_minutes),
                    ("--warmup-steps", self.warmup_steps),
                )
                if value is None
            ]
            if needed:
                raise ReforBertInputError(f"--fit-schedule-to-time-budget needs {' and '.join(needed)}")
            if self.max_tokens is not None:
                raise ReforBertInputError("--fit-schedule-to-time-budget and --max-tokens exclude each other")

    def model_config_overrides(self) -> dict[str, Any]:
        """Model config fields set by --config and by the shortcut flags (the shortcuts win)."""
        overrides = dict(self.config_overrides)
        for flag, field in CONFIG_SHORTCUTS.items():
            value = getattr(self, flag)
            if value is not None:
                overrides[field] = value
        return overrides

    def __post_init__(self) -> None:
        # Paths are recorded as text, whichever type the caller passed.
        for name in ("data", "vocab", "output", "init_from", "eval_data"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))


def changed_invariants(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Descriptions of the resume invariants whose value differs between two runs' settings."""
    changed = []
    for key in RESUME_INVARIANTS:
        before = saved.get(key, INVARIANT_DEFAULTS.get(key))
        if before != current.get(key):
            changed.append(f"{key}: {before!r} -> {current.get(key)!r}")
    return changed


# ---------------------------------------------------------------------------------------------------
# Command line


def recipe_flags(name: str) -> list[str]:
    """A recipe written as the command-line flags it stands for."""
    flags: list[str] = []
    for key, value in RECIPES[name].items():
        if key == "config_overrides":
            flags += [f"--config {field}={json.dumps(setting)}" for field, setting in value.items()]
        elif isinstance(value, bool):
            flags.append(f"--{'' if value else 'no-'}{key.replace('_', '-')}")
        else:
            flags.append(f"--{key.replace('_', '-')} {value}")
    return flags


def recipe_help() -> str:
    """One sentence per recipe listing what it sets, for --help."""
    return " ".join(f"{name} stands for: {' '.join(recipe_flags(name))}." for name in RECIPES)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add one flag per field of :class:`PretrainingArguments`, help taken from the field.

    Flags not given stay absent from the parsed namespace (their default is ``SUPPRESS``), so that
    :func:`arguments_from_namespace` can tell explicit flags from defaults and let a recipe fill the gap.
    """
    from reforbert.cli import add_deprecated_alias, add_example

    hints = typing.get_type_hints(PretrainingArguments)
    for field in dataclasses.fields(PretrainingArguments):
        meta = field.metadata
        flag = "--" + field.name.replace("_", "-")
        names = [*meta.get("flags", []), flag] if field.name != "config_overrides" else ["--config"]
        help_text = meta["help"].replace("%", "%%")  # argparse formats help strings with %
        if field.name == "recipe":
            help_text += " " + recipe_help()
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        for key in ("choices", "metavar", "required"):
            if key in meta:
                options[key] = meta[key]
        value_type = _value_type(hints[field.name])
        if field.name == "config_overrides":
            options["action"] = "append"
        elif value_type is bool:
            negatable = meta.get("negatable") or field.default is True
            options["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
        else:
            options["type"] = value_type
        # Canonical long flag first, so that it is the one --help and error messages show.
        action = parser.add_argument(*sorted(names, key=lambda name: not name.startswith("--")), **options)
        if meta.get("deprecated"):
            add_deprecated_alias(parser, action, *meta["deprecated"])
    add_example(parser, *EXAMPLES)


def _value_type(annotation: Any) -> Any:
    """``int`` for ``int | None`` and so on: the type argparse converts the flag's text to."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return typing.get_origin(annotation) or annotation


def parse_config_values(items: list[str]) -> dict[str, Any]:
    """``--config KEY=VALUE`` items as a dict; values are JSON when they parse as JSON, else strings."""
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


def arguments_from_namespace(namespace: argparse.Namespace) -> PretrainingArguments:
    """The arguments given on the command line, on top of the recipe's (or the built-in) defaults."""
    names = {field.name for field in dataclasses.fields(PretrainingArguments)}
    given = {key: value for key, value in vars(namespace).items() if key in names}
    if "config_overrides" in given:
        given["config_overrides"] = parse_config_values(given["config_overrides"])
    return PretrainingArguments.resolve(**given)
