"""KorQuAD 1.0: extract the answer to a question from a Wikipedia paragraph (EM and character F1 x 100).

File: SQuAD v1.1 JSON (``data`` -> articles -> ``paragraphs`` -> ``context`` + ``qas`` -> ``answers``).

Encoding: ``[CLS] question [SEP] context window [SEP]``. A context longer than the room left after
the question is covered by sliding windows whose starts are ``doc_stride`` tokens apart (the
stride of the original BERT SQuAD recipe, so neighbouring windows overlap). A training window that
does not hold the whole answer points at ``[CLS]`` (position 0). Character offsets from the fast
tokenizer map predicted token spans back to the original context, so the predicted text is cut from
the context itself, never rebuilt from sub-words.

An answer whose text is not found at its ``answer_start`` is counted (``misaligned_answers`` in the
score), left out of training, and scored like any other question in evaluation.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from reforbert.errors import ReforBertInputError
from reforbert.tasks import metrics
from reforbert.tasks.base import EncodedSplit, Task, TaskDefaults

logger = logging.getLogger(__name__)

CLS_POSITION = 0


@dataclass(frozen=True)
class QaExample:
    question_id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character offset of its start in context)
    title: str
    article: int  # index of the article in the file; dev splits keep articles whole
    paragraph: int  # index of the paragraph in the file (a few paragraphs share the same context)

    def answer_is_aligned(self, answer: int = 0) -> bool:
        text, start = self.answers[answer]
        return self.context[start : start + len(text)] == text


def count_misaligned_answers(examples: Sequence[QaExample]) -> int:
    return sum(not example.answer_is_aligned(i) for example in examples for i in range(len(example.answers)))


def _require(condition: bool, message: str, path: Path) -> None:
    if not condition:
        raise ReforBertInputError(message, path)


class KorQuadTask(Task):
    name: ClassVar[str] = "korquad"
    head: ClassVar = "question-answering"
    main_metric: ClassVar[str] = "exact_match"
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        max_seq_length=512,
        epochs=7,
        learning_rate=5e-5,
        batch_size=32,
        doc_stride=128,
        max_query_length=64,
        max_answer_length=30,
    )
    n_best: ClassVar[int] = 20

    def __init__(
        self,
        doc_stride: int | None = None,
        max_query_length: int | None = None,
        max_answer_length: int | None = None,
    ) -> None:
        self.doc_stride = doc_stride or self.defaults.doc_stride
        self.max_query_length = max_query_length or self.defaults.max_query_length
        self.max_answer_length = max_answer_length or self.defaults.max_answer_length
        # Set by ``encode``: answers that did not match their context and so could not be trained on.
        self.misaligned_answers = 0

    @property
    def label_names(self) -> list[str]:
        return []

    def dropped_in_training(self) -> dict[str, int]:
        if not self.misaligned_answers:
            return {}
        return {"whose answer text is not at its answer_start": self.misaligned_answers}

    def read(self, path: str | Path) -> list[QaExample]:
        path = Path(path)
        if not path.is_file():
            raise ReforBertInputError("no such file", path)
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        except json.JSONDecodeError as error:
            raise ReforBertInputError(f"not valid JSON ({error.msg})", path, error.lineno) from error
        except UnicodeDecodeError as error:
            raise ReforBertInputError(f"not UTF-8 text ({error.reason})", path) from error
        _require(
            isinstance(document, dict) and isinstance(document.get("data"), list),
            'expected SQuAD v1.1 JSON: an object with a "data" list of articles',
            path,
        )
        examples: list[QaExample] = []
        seen: set[str] = set()
        paragraph_index = -1
        for article_index, article in enumerate(document["data"]):
            where = f"article {article_index}"
            _require(
                isinstance(article, dict) and isinstance(article.get("paragraphs"), list),
                f'{where}: expected an object with a "paragraphs" list',
                path,
            )
            for paragraph in article["paragraphs"]:
                paragraph_index += 1
                _require(
                    isinstance(paragraph, dict)
                    and isinstance(paragraph.get("context"), str)
                    and isinstance(paragraph.get("qas"), list),
                    f'{where}: every paragraph needs a "context" string and a "qas" list',
                    path,
                )
                for qa in paragraph["qas"]:
                    question_id = qa.get("id") if isinstance(qa, dict) else None
                    _require(
                        isinstance(question_id, str) and isinstance(qa.get("question"), str),
                        f'{where}: every question needs an "id" and a "question" string',
                        path,
                    )
                    _require(question_id not in seen, f"question id {question_id!r} occurs twice", path)
                    seen.add(question_id)
                    answers = qa.get("answers")
                    _require(
                        isinstance(answers, list) and len(answers) > 0,
                        f'question {question_id}: needs a non-empty "answers" list',
                        path,
                    )
                    parsed = []
                    for answer in answers:
                        _require(
                            isinstance(answer, dict)
                            and isinstance(answer.get("text"), str)
                            and isinstance(answer.get("answer_start"), int)
                            and not isinstance(answer["answer_start"], bool)
                            and answer["answer_start"] >= 0,
                            f'question {question_id}: an answer needs "text" and "answer_start" >= 0',
                            path,
                        )
                        parsed.append((answer["text"], answer["answer_start"]))
                    examples.append(
                        QaExample(
                            question_id,
                            qa["question"],
                            paragraph["context"],
                            parsed,
                            str(article.get("title", "")),
                            article_index,
                            paragraph_index,
                        )
                    )
        _require(len(examples) > 0, "no questions in the file", path)
        return examples

    def split_dev(self, examples: Sequence[QaExample], fraction: float, seed: int) -> tuple[list, list]:
        """Carve whole articles, so that no paragraph is seen in both training and evaluation.

        The split lives in memory only: the KorQuAD license forbids saving a modified copy.
        """
        articles = sorted({example.article for example in examples})
        if len(articles) < 2:
            raise ReforBertInputError("cannot split by article: the file holds fewer than two articles")
        random.Random(seed).shuffle(articles)
        n_dev = min(len(articles) - 1, max(1, round(len(articles) * fraction)))
        dev_articles = set(articles[:n_dev])
        train = [example for example in examples if example.article not in dev_articles]
        dev = [example for example in examples if example.article in dev_articles]
        return train, dev

    def encode(
        self, examples: Sequence[QaExample], tokenizer: Any, max_seq_length: int, training: bool
    ) -> EncodedSplit:
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls_id is None or sep_id is None:
            raise ReforBertInputError("the tokenizer has no [CLS] or [SEP] token")
        # Paragraphs carry several questions each: tokenise every distinct context once.
        contexts = list(dict.fromkeys(example.context for example in examples))
        context_index = {context: index for index, context in enumerate(contexts)}
        tokenized_contexts = tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True)
        tokenized_questions = tokenizer([example.question for example in examples], add_special_tokens=False)

        model_inputs: list[dict[str, Any]] = []
        metadata: list[dict[str, Any]] = []
        self.misaligned_answers = 0
        for example_index, example in enumerate(examples):
            question_ids = tokenized_questions["input_ids"][example_index][: self.max_query_length]
            which = context_index[example.context]
            context_ids = tokenized_contexts["input_ids"][which]
            offsets = [tuple(pair) for pair in tokenized_contexts["offset_mapping"][which]]
            room = max_seq_length - len(question_ids) - 3  # [CLS], [SEP], [SEP]
            if room < 1:
                raise ReforBertInputError(
                    f"max_seq_length {max_seq_length} leaves no room for the context after a "
                    f"{len(question_ids)}-token question"
                )
            answer_tokens = self._answer_token_span(example, offsets)
            if answer_tokens is None:
                self.misaligned_answers += 1
                if training:
                    continue  # nothing to learn from an answer that is not where the file says
            context_start = len(question_ids) + 2
            window_start = 0
            while True:
                window_end = min(window_start + room, len(context_ids))
                input_ids = [cls_id, *question_ids, sep_id, *context_ids[window_start:window_end], sep_id]
                start_position = end_position = CLS_POSITION
                if (
                    answer_tokens is not None
                    and window_start <= answer_tokens[0]
                    and answer_tokens[1] < window_end
                ):
                    start_position = answer_tokens[0] - window_start + context_start
                    end_position = answer_tokens[1] - window_start + context_start
                model_inputs.append(
                    {
                        "input_ids": input_ids,
                        "token_type_ids": [0] * context_start + [1] * (len(input_ids) - context_start),
                        "attention_mask": [1] * len(input_ids),
                        "start_positions": start_position,
                        "end_positions": end_position,
                    }
                )
                meta: dict[str, Any] = {"example_index": example_index}
                if not training:
                    meta["context_start"] = context_start
                    meta["offsets"] = offsets[window_start:window_end]
                metadata.append(meta)
                if window_end >= len(context_ids):
                    break
                window_start += min(self.doc_stride, room)
        if self.misaligned_answers and model_inputs:  # with nothing left, the caller's error says it
            logger.warning("%d answers do not match their context at answer_start", self.misaligned_answers)
        return EncodedSplit(model_inputs=model_inputs, metadata=metadata)

    @staticmethod
    def _answer_token_span(example: QaExample, offsets: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
        """First and last context token of the first answer, or None if the answer is misaligned."""
        if not example.answer_is_aligned(0):
            return None
        text, start_char = example.answers[0]
        end_char = start_char + len(text)
        # A token belongs to the answer if its characters overlap it; offsets may include a leading space.
        inside = [
            index for index, (start, end) in enumerate(offsets) if start < end_char and end > start_char
        ]
        if not inside:
            return None
        return inside[0], inside[-1]

    def predict_answers(
        self,
        examples: Sequence[QaExample],
        encoded: EncodedSplit,
        start_logits: np.ndarray,
        end_logits: np.ndarray,
    ) -> dict[str, str]:
        """The best span of each question over all its windows, cut from the original context.

        Candidates are the top ``n_best`` start and end positions among context tokens, with
        end >= start and at most ``max_answer_length`` tokens; the span score is start + end logit.
        """
        best: dict[int, tuple[float, int, int]] = {}
        for feature, meta in enumerate(encoded.metadata):
            offsets, first = meta["offsets"], meta["context_start"]
            starts = np.asarray(start_logits[feature][first : first + len(offsets)], dtype=np.float64)
            ends = np.asarray(end_logits[feature][first : first + len(offsets)], dtype=np.float64)
            top_starts = np.argsort(-starts, kind="stable")[: self.n_best]
            top_ends = np.argsort(-ends, kind="stable")[: self.n_best]
            for start in top_starts:
                for end in top_ends:
                    if end < start or end - start + 1 > self.max_answer_length:
                        continue
                    score = starts[start] + ends[end]
                    example_index = meta["example_index"]
                    if example_index not in best or score > best[example_index][0]:
                        best[example_index] = (score, offsets[start][0], offsets[end][1])
        answers = {}
        for example_index, example in enumerate(examples):
            if example_index in best:
                _, char_start, char_end = best[example_index]
                answers[example.question_id] = example.context[char_start:char_end].strip()
            else:
                answers[example.question_id] = ""
        return answers

    def score(
        self,
        examples: Sequence[QaExample],
        encoded: EncodedSplit,
        predictions: np.ndarray | tuple[np.ndarray, ...],
    ) -> dict[str, Any]:
        start_logits, end_logits = predictions[0], predictions[1]
        if len(start_logits) != len(encoded.metadata) or "offsets" not in (encoded.metadata or [{}])[0]:
            raise ValueError(
                "score needs the windows of an evaluation encoding (training=False) and their logits"
            )
        answers = self.predict_answers(examples, encoded, np.asarray(start_logits), np.asarray(end_logits))
        gold = {example.question_id: [text for text, _ in example.answers] for example in examples}
        scores: dict[str, Any] = metrics.korquad_scores(answers, gold)
        scores["questions"] = len(examples)
        scores["misaligned_answers"] = count_misaligned_answers(examples)
        scores["unanswered"] = sum(1 for text in answers.values() if not text)
        return scores
