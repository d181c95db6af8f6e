"""Naver NER (NLP Challenge 2018): tag each word with one of 14 entity types (entity-level F1 x 100).

File: one sentence per line, ``words<TAB>tags``, words and tags separated by spaces, equally many of
each, no header. Tags are suffix style (``PER-B``, ``PER-I``, ``O``); seqeval scores them after
conversion to ``B-PER``.

A word's label goes on its first sub-word; its other sub-words (and the special tokens) get
``IGNORE_INDEX`` so that neither the loss nor the score sees them. The prediction for a word is the
prediction on its first sub-word. Words cut off by the maximum length are predicted ``O`` and still
scored, so a short ``max_seq_length`` costs recall instead of silently shrinking the test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from reforbert.configuration_reforbert import IGNORE_INDEX
from reforbert.errors import ReforBertInputError
from reforbert.fileio import iter_utf8_lines
from reforbert.tasks import metrics
from reforbert.tasks.base import EncodedSplit, Task, TaskDefaults

OUTSIDE = "O"
# The challenge's 14 entity types, in the order the benchmark's label list uses.
ENTITY_TYPES = (
    "PER",
    "FLD",
    "AFW",
    "ORG",
    "LOC",
    "CVL",
    "DAT",
    "TIM",
    "NUM",
    "EVT",
    "ANM",
    "PLT",
    "MAT",
    "TRM",
)
NER_LABELS: tuple[str, ...] = (OUTSIDE,) + tuple(
    f"{entity}-{part}" for entity in ENTITY_TYPES for part in "BI"
)


@dataclass(frozen=True)
class NerSentence:
    words: list[str]
    tags: list[str]
    line: int


class NaverNerTask(Task):
    name: ClassVar[str] = "naver-ner"
    head: ClassVar = "token-classification"
    main_metric: ClassVar[str] = "f1"
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        max_seq_length=128, epochs=20, learning_rate=5e-5, batch_size=32
    )

    @property
    def label_names(self) -> list[str]:
        return list(NER_LABELS)

    def read(self, path: str | Path) -> list[NerSentence]:
        path = Path(path)
        if not path.is_file():
            raise ReforBertInputError("no such file", path)
        allowed = set(NER_LABELS)
        sentences = []
        for line_number, line in iter_utf8_lines(path):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ReforBertInputError(
                    f"expected 2 tab-separated fields (words, tags), found {len(fields)}", path, line_number
                )
            words, tags = fields[0].split(), fields[1].split()
            if len(words) != len(tags) or not words:
                raise ReforBertInputError(
                    f"{len(words)} words but {len(tags)} tags; every word needs exactly one tag",
                    path,
                    line_number,
                )
            for tag in tags:
                if tag not in allowed:
                    raise ReforBertInputError(
                        f"unknown tag {tag!r}; allowed: {', '.join(NER_LABELS)}", path, line_number
                    )
            sentences.append(NerSentence(words, tags, line_number))
        if not sentences:
            raise ReforBertInputError("no sentences in the file", path)
        return sentences

    def encode(
        self, examples: Sequence[NerSentence], tokenizer: Any, max_seq_length: int, training: bool
    ) -> EncodedSplit:
        label_ids = {label: index for index, label in enumerate(NER_LABELS)}
        encoded = tokenizer(
            [sentence.words for sentence in examples],
            is_split_into_words=True,
            truncation=True,
            max_length=max_seq_length,
            return_token_type_ids=True,
            return_attention_mask=True,
        )
        model_inputs, metadata = [], []
        for index, sentence in enumerate(examples):
            word_ids = encoded.word_ids(index)
            labels = [IGNORE_INDEX] * len(word_ids)
            # first_subword[w] = position of word w's first sub-word; absent for words truncated away
            # (or, with an odd tokenizer, words that produced no sub-word at all).
            first_subword: dict[int, int] = {}
            for position, word in enumerate(word_ids):
                if word is not None and word not in first_subword:
                    first_subword[word] = position
                    labels[position] = label_ids[sentence.tags[word]]
            model_inputs.append(
                {
                    "input_ids": encoded["input_ids"][index],
                    "token_type_ids": encoded["token_type_ids"][index],
                    "attention_mask": encoded["attention_mask"][index],
                    "labels": labels,
                }
            )
            metadata.append(
                {
                    "line": sentence.line,
                    "word_first_subword": [
                        first_subword.get(word, -1) for word in range(len(sentence.words))
                    ],
                }
            )
        return EncodedSplit(model_inputs=model_inputs, metadata=metadata)

    def predicted_tags(self, encoded: EncodedSplit, logits: np.ndarray) -> tuple[list[list[str]], int]:
        """Each word's tag from its first sub-word (``O`` if truncated away), and how many were truncated."""
        sentences, truncated = [], 0
        for index, meta in enumerate(encoded.metadata):
            best = logits[index].argmax(axis=-1)
            tags = []
            for position in meta["word_first_subword"]:
                if position < 0:
                    truncated += 1
                    tags.append(OUTSIDE)
                else:
                    tags.append(NER_LABELS[int(best[position])])
            sentences.append(tags)
        return sentences, truncated

    def score(
        self,
        examples: Sequence[NerSentence],
        encoded: EncodedSplit,
        predictions: np.ndarray | tuple[np.ndarray, ...],
    ) -> dict[str, Any]:
        logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        if len(logits) != len(examples) or len(encoded.metadata) != len(examples):
            raise ValueError(f"{len(logits)} predictions for {len(examples)} sentences")
        predicted, truncated = self.predicted_tags(encoded, logits)
        scores: dict[str, Any] = metrics.entity_scores([sentence.tags for sentence in examples], predicted)
        scores["truncated_words"] = truncated
        scores["sentences"] = len(examples)
        return scores
