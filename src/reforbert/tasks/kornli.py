"""KorNLI: does the premise entail, contradict or say nothing about the hypothesis? (accuracy)

File: ``sentence1<TAB>sentence2<TAB>gold_label`` with a header; labels are the words entailment,
neutral, contradiction. Sentences hold unbalanced ``"``: split on tabs only.
"""

from __future__ import annotations

from typing import ClassVar

from reforbert.tasks.base import TaskDefaults
from reforbert.tasks.classification import TsvClassificationTask


class KorNliTask(TsvClassificationTask):
    name: ClassVar[str] = "kornli"
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        max_seq_length=128, epochs=15, learning_rate=5e-5, batch_size=128
    )
    header = ("sentence1", "sentence2", "gold_label")
    text_a_column = 0
    text_b_column = 1
    label_column = 2
    label_values = {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"}
