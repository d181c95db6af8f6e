"""KorSTS: how similar in meaning are two sentences, from 0 to 5? (Spearman x 100)

File: ``genre<TAB>filename<TAB>year<TAB>id<TAB>score<TAB>sentence1<TAB>sentence2`` with a header.
A regression head (one output) predicts the score. Hundreds of rows hold unbalanced ``"``: split on
tabs only. The dev file has no final newline, which the reader accepts.
"""

from __future__ import annotations

from typing import ClassVar

from reforbert.tasks.base import TaskDefaults
from reforbert.tasks.classification import TsvClassificationTask


class KorStsTask(TsvClassificationTask):
    name: ClassVar[str] = "korsts"
    main_metric: ClassVar[str] = "spearman"
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        max_seq_length=128, epochs=10, learning_rate=5e-5, batch_size=32
    )
    header = ("genre", "filename", "year", "id", "score", "sentence1", "sentence2")
    text_a_column = 5
    text_b_column = 6
    label_column = 4
    label_values = None
    score_range = (0.0, 5.0)
