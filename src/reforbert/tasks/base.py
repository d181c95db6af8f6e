"""What a fine-tuning task is: how it reads its genuine files, encodes them, and scores predictions.

The fine-tuning runner knows nothing about any particular benchmark; it asks the task for examples,
model inputs and a score. Adding a benchmark means adding one module with one ``Task`` subclass and
registering it in ``reforbert.tasks``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

Head = Literal["sequence-classification", "token-classification", "question-answering"]


@dataclass(frozen=True)
class TaskDefaults:
    """Hyperparameters that the published Korean models used for this task (AdamW, linear decay, seed 42)."""

    max_seq_length: int
    epochs: int
    learning_rate: float
    batch_size: int
    # Only question answering uses these.
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30


@dataclass
class EncodedSplit:
    """Model inputs for the Trainer, plus what scoring needs to map predictions back to examples.

    ``model_inputs[i]`` holds only keys the model's forward accepts (input_ids, token_type_ids,
    attention_mask and labels, or start_positions/end_positions); ``metadata[i]`` holds anything else
    (offsets, the example a window came from, which sub-words carry a word's label).
    """

    model_inputs: list[dict[str, list[int] | int | float]]
    metadata: list[dict[str, Any]] = field(default_factory=list)


class Task(ABC):
    name: ClassVar[str]
    head: ClassVar[Head]
    defaults: ClassVar[TaskDefaults]
    # The metric the results table shows for this task (e.g. "accuracy", "f1", "spearman", "exact_match").
    main_metric: ClassVar[str]

    @property
    @abstractmethod
    def label_names(self) -> list[str]:
        """Class names in id order; empty for regression and question answering."""

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @abstractmethod
    def read(self, path: str | Path) -> list[Any]:
        """Read the genuine file format; raise ReforBertInputError with file:line on a malformed row."""

    def split_dev(self, examples: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
        """Carve a dev split out of a train file that has no companion dev file (random by default)."""
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        n_dev = max(1, round(len(examples) * fraction))
        dev = sorted(order[:n_dev])
        train = sorted(order[n_dev:])
        return [examples[i] for i in train], [examples[i] for i in dev]

    @abstractmethod
    def encode(
        self, examples: Sequence[Any], tokenizer: Any, max_seq_length: int, training: bool
    ) -> EncodedSplit:
        """Turn examples into model inputs; ``training`` false keeps what scoring needs in metadata."""

    def dropped_in_training(self) -> dict[str, int]:
        """Examples the last training ``encode`` left out, counted by reason (none by default)."""
        return {}

    @abstractmethod
    def score(
        self, examples: Sequence[Any], encoded: EncodedSplit, predictions: np.ndarray | tuple[np.ndarray, ...]
    ) -> dict[str, Any]:
        """Metrics exactly as the benchmark defines them, from raw model outputs (logits).

        Returns floats keyed by metric name (``main_metric`` among them, in percent where the benchmark
        reports percent) and optionally a "confusion_matrix" list of lists.
        """
