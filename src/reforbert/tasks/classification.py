"""Sentence and sentence-pair classification (or regression) over tab-separated benchmark files.

NSMC, PAWS-X, KorNLI, KorSTS and Question Pair differ only in their columns, their labels and a
quirk or two, so each of them is a short declarative subclass of ``TsvClassificationTask``.

The files are split on tabs with no quote handling: several of them contain unbalanced ``"`` that a
CSV reader would swallow across rows, and the benchmarks' own readers keep quotes as text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from reforbert.errors import ReforBertInputError
from reforbert.fileio import iter_utf8_lines
from reforbert.tasks import metrics
from reforbert.tasks.base import EncodedSplit, Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentenceExample:
    """One row: a sentence (or a pair) and its class id, or its score for regression."""

    text_a: str
    text_b: str | None
    label: int | float
    line: int  # 1-based line in the source file, for messages


def iter_tsv_rows(
    path: str | Path, num_fields: int, header: Sequence[str] | None
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` for each data row, checking the header and the field count.

    Blank lines are skipped; ``\\r\\n`` endings are accepted; a missing final newline is fine.
    """
    path = Path(path)
    if not path.is_file():
        raise ReforBertInputError("no such file", path)
    for line_number, line in iter_utf8_lines(path):
        if line_number == 1 and header is not None:
            if line.lstrip("\ufeff").split("\t") != list(header):
                raise ReforBertInputError(
                    f"expected the header {'<TAB>'.join(header)!r}, found {line[:80]!r}", path, 1
                )
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != num_fields:
            raise ReforBertInputError(
                f"expected {num_fields} tab-separated fields, found {len(fields)}", path, line_number
            )
        yield line_number, fields


class TsvClassificationTask(Task):
    """A benchmark whose file has one example per tab-separated row.

    Subclasses declare the header, which columns hold the sentences and the label, and either the
    label names with the label string each one is written as (classification) or nothing
    (``label_values = None``: regression on a float score).
    """

    head: ClassVar = "sequence-classification"
    main_metric: ClassVar[str] = "accuracy"
    header: ClassVar[tuple[str, ...]]
    text_a_column: ClassVar[int]
    text_b_column: ClassVar[int | None] = None
    label_column: ClassVar[int]
    # label string in the file -> label name; ids follow this order. None means a float score.
    label_values: ClassVar[dict[str, str] | None]
    score_range: ClassVar[tuple[float, float]] = (0.0, 5.0)
    # What ``keep_row`` drops, in the words of the run's log and of the error when nothing is left.
    dropped_row_kind: ClassVar[str] = "placeholder rows"

    def __init__(self) -> None:
        # Rows that ``read`` dropped on purpose (e.g. untranslated PAWS-X rows), for the run's log.
        self.dropped_rows = 0

    @property
    def label_names(self) -> list[str]:
        return list(self.label_values.values()) if self.label_values is not None else []

    @property
    def is_regression(self) -> bool:
        return self.label_values is None

    def keep_row(self, fields: list[str]) -> bool:
        """Whether a well-formed row is an example; a subclass drops placeholder rows here."""
        return True

    def parse_label(self, value: str, path: Path, line: int) -> int | float:
        if self.label_values is None:
            try:
                score = float(value)
            except ValueError:
                raise ReforBertInputError(f"score {value!r} is not a number", path, line) from None
            low, high = self.score_range
            if not low <= score <= high:
                raise ReforBertInputError(f"score {score} is outside {low}-{high}", path, line)
            return score
        ids = {raw: index for index, raw in enumerate(self.label_values)}
        if value not in ids:
            allowed = ", ".join(f"{raw} ({name})" for raw, name in self.label_values.items())
            raise ReforBertInputError(f"unknown label {value!r}; allowed: {allowed}", path, line)
        return ids[value]

    def read(self, path: str | Path) -> list[SentenceExample]:
        path = Path(path)
        examples = []
        self.dropped_rows = 0
        for line, fields in iter_tsv_rows(path, len(self.header), self.header):
            if not self.keep_row(fields):
                self.dropped_rows += 1
                continue
            text_b = fields[self.text_b_column] if self.text_b_column is not None else None
            label = self.parse_label(fields[self.label_column].strip(), path, line)
            examples.append(SentenceExample(fields[self.text_a_column], text_b, label, line))
        if self.dropped_rows:
            logger.info(
                "%s: dropped %d %s, kept %d", path, self.dropped_rows, self.dropped_row_kind, len(examples)
            )
        if not examples and self.dropped_rows:
            raise ReforBertInputError(
                f"no examples left: all {self.dropped_rows} rows were dropped as {self.dropped_row_kind}",
                path,
            )
        if not examples:
            raise ReforBertInputError("no examples in the file", path)
        return examples

    def encode(
        self, examples: Sequence[SentenceExample], tokenizer: Any, max_seq_length: int, training: bool
    ) -> EncodedSplit:
        texts_a = [example.text_a for example in examples]
        texts_b = [example.text_b or "" for example in examples] if self.text_b_column is not None else None
        encoded = tokenizer(
            texts_a,
            texts_b,
            truncation=True,  # longest_first: trims the longer sentence of a pair first
            max_length=max_seq_length,
            return_token_type_ids=True,
            return_attention_mask=True,
        )
        model_inputs = []
        for index, example in enumerate(examples):
            model_inputs.append(
                {
                    "input_ids": encoded["input_ids"][index],
                    "token_type_ids": encoded["token_type_ids"][index],
                    "attention_mask": encoded["attention_mask"][index],
                    "labels": float(example.label) if self.is_regression else int(example.label),
                }
            )
        metadata = [{"line": example.line} for example in examples]
        return EncodedSplit(model_inputs=model_inputs, metadata=metadata)

    def score(
        self,
        examples: Sequence[SentenceExample],
        encoded: EncodedSplit,
        predictions: np.ndarray | tuple[np.ndarray, ...],
    ) -> dict[str, Any]:
        logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        if len(logits) != len(examples):
            raise ValueError(f"{len(logits)} predictions for {len(examples)} examples")
        gold = [example.label for example in examples]
        if self.is_regression:
            return {
                "spearman": metrics.spearman(logits.reshape(len(examples), -1)[:, 0], gold),
                "examples": len(examples),
            }
        predicted = logits.reshape(len(examples), -1).argmax(axis=-1)
        return {
            "accuracy": metrics.accuracy(predicted, gold),
            "confusion_matrix": metrics.confusion_matrix(predicted, gold, self.num_labels),
            "examples": len(examples),
        }
