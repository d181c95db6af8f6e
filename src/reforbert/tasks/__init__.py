"""The seven Korean fine-tuning benchmarks, by the name the command line uses."""

from __future__ import annotations

from reforbert.errors import ReforBertInputError
from reforbert.tasks.base import EncodedSplit, Task, TaskDefaults
from reforbert.tasks.kornli import KorNliTask
from reforbert.tasks.korquad import KorQuadTask
from reforbert.tasks.korsts import KorStsTask
from reforbert.tasks.naver_ner import NaverNerTask
from reforbert.tasks.nsmc import NsmcTask
from reforbert.tasks.paws import PawsTask
from reforbert.tasks.question_pair import QuestionPairTask

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (NsmcTask, NaverNerTask, PawsTask, KorNliTask, KorStsTask, QuestionPairTask, KorQuadTask)
}


def get_task(name: str) -> Task:
    """A fresh task object for ``name`` with the benchmark's default settings."""
    if name not in TASKS:
        raise ReforBertInputError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "EncodedSplit", "Task", "TaskDefaults", "get_task"]
