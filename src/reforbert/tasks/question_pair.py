"""Question Pair ("Paired Question v.2"): do two questions ask the same thing? (accuracy)

File: ``question1<TAB>question2<TAB>is_duplicate`` with a header. Despite the column's name, label 0
means the SAME question and 1 a different one (the dataset's README says so, and identical pairs are
labelled 0); the ids are kept as in the file and named for what they mean. Some fields are CSV-quoted
with doubled quotes; the benchmark splits on tabs and keeps them as text, and so does this reader.
"""

from __future__ import annotations

from typing import ClassVar

from reforbert.tasks.base import TaskDefaults
from reforbert.tasks.classification import TsvClassificationTask


class QuestionPairTask(TsvClassificationTask):
    name: ClassVar[str] = "question-pair"
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        max_seq_length=128, epochs=10, learning_rate=5e-5, batch_size=32
    )
    header = ("question1", "question2", "is_duplicate")
    text_a_column = 0
    text_b_column = 1
    label_column = 2
    label_values = {"0": "same_question", "1": "different_question"}
