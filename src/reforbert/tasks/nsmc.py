"""NSMC, the Naver Sentiment Movie Corpus: is a movie review positive? (accuracy)

File: ``id<TAB>document<TAB>label`` with a header; label 0 negative, 1 positive. A few documents are
empty and stay in (the benchmark counts them); ``"`` inside a document is text, not quoting.
"""

from __future__ import annotations

from typing import ClassVar

from reforbert.tasks.base import TaskDefaults
from reforbert.tasks.classification import TsvClassificationTask


class NsmcTask(TsvClassificationTask):
    name: ClassVar[str] = "nsmc"
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        max_seq_length=128, epochs=10, learning_rate=5e-5, batch_size=32
    )
    header = ("id", "document", "label")
    text_a_column = 1
    label_column = 2
    label_values = {"0": "negative", "1": "positive"}
