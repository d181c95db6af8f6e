"""PAWS-X Korean: are two sentences paraphrases of each other? (accuracy)

File: ``id<TAB>sentence1<TAB>sentence2<TAB>label`` with a header; label 0 not a paraphrase, 1 paraphrase.
Rows whose sentence is the placeholder ``NS`` (never translated) are dropped, as the dataset's own
instructions say; ``dropped_rows`` counts them.
"""

from __future__ import annotations

from typing import ClassVar

from reforbert.tasks.base import TaskDefaults
from reforbert.tasks.classification import TsvClassificationTask

UNTRANSLATED = "NS"


class PawsTask(TsvClassificationTask):
    name: ClassVar[str] = "paws"
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        max_seq_length=128, epochs=15, learning_rate=3e-5, batch_size=64
    )
    header = ("id", "sentence1", "sentence2", "label")
    text_a_column = 1
    text_b_column = 2
    label_column = 3
    label_values = {"0": "not_paraphrase", "1": "paraphrase"}
    dropped_row_kind = f"untranslated ({UNTRANSLATED}) rows"

    def keep_row(self, fields: list[str]) -> bool:
        return UNTRANSLATED not in (fields[1].strip(), fields[2].strip())
