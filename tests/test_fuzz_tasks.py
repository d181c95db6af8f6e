"""Fuzzing the seven benchmark readers: NSMC, Naver NER, PAWS-X, KorNLI, KorSTS, Question Pair, KorQuAD.

Each case corrupts a small valid file in the benchmark's own format and reads it as fine-tuning does
(``task.read``, then ``task.encode`` for training and for evaluation). A case ends in examples that
satisfy the format's rules or in one ``ReforBertInputError`` naming the file (and a line in it).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzzing import apply_file_corruptions, file_corruptions, outcome, run_fuzz
from test_finetuning import write_korquad, write_korsts, write_naver_ner, write_nsmc

from reforbert.errors import ReforBertInputError
from reforbert.tasks import get_task
from reforbert.tasks.classification import SentenceExample, TsvClassificationTask
from reforbert.tasks.korquad import QaExample
from reforbert.tasks.naver_ner import NER_LABELS, NerSentence

MAX_SEQ_LENGTH = 128  # leaves room for a context after a question cut to max_query_length (64)


def write_pairs(
    header: str, labels: list[str], placeholder: str | None = None
) -> Callable[[Path, int, int], None]:
    """A writer for a sentence-pair file with ``header`` whose label column is the last one."""

    def write(path: Path, n: int, seed: int) -> None:
        rng = random.Random(seed)
        columns = header.split("\t")
        lines = [header]
        for index in range(n):
            first = " ".join(rng.choice(["하늘이", "바다가", '"따옴표', "푸르다", "넓다."]) for _ in range(4))
            second = placeholder if placeholder and index == 1 else first[::-1]
            row = {"id": str(index)}
            fields = [row.get(name, first if name.endswith("1") else second) for name in columns[:-1]]
            lines.append("\t".join([*fields, labels[index % len(labels)]]))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    return write


WRITERS: dict[str, tuple[str, Callable[[Path, int, int], None]]] = {
    "nsmc": ("ratings_train.txt", write_nsmc),
    "naver-ner": ("train.tsv", write_naver_ner),
    "paws": ("translated_train.tsv", write_pairs("id\tsentence1\tsentence2\tlabel", ["0", "1"], "NS")),
    "kornli": (
        "multinli.train.ko.tsv",
        write_pairs("sentence1\tsentence2\tgold_label", ["entailment", "neutral", "contradiction"]),
    ),
    "korsts": ("sts-train.tsv", write_korsts),
    "question-pair": ("train.tsv", write_pairs("question1\tquestion2\tis_duplicate", ["0", "1"])),
    "korquad": ("KorQuAD_v1.0_train.json", write_korquad),
}


def check_examples(task, examples: list) -> None:
    """What every example of a successful read must satisfy."""
    assert examples, "a successful read returns at least one example"
    for example in examples:
        if isinstance(task, TsvClassificationTask):
            assert isinstance(example, SentenceExample)
            if task.is_regression:
                low, high = task.score_range
                assert math.isfinite(example.label) and low <= example.label <= high
            else:
                assert example.label in range(task.num_labels)
            assert (example.text_b is None) == (task.text_b_column is None)
        elif isinstance(example, NerSentence):
            assert len(example.words) == len(example.tags) > 0
            assert set(example.tags) <= set(NER_LABELS)
        else:
            assert isinstance(example, QaExample) and example.answers
            assert all(isinstance(text, str) and start >= 0 for text, start in example.answers)


def read_and_encode(task, path: Path, tokenizer) -> None:
    examples = task.read(path)
    check_examples(task, examples)
    for training in (True, False):
        encoded = task.encode(examples, tokenizer, MAX_SEQ_LENGTH, training=training)
        for features in encoded.model_inputs:
            assert len(features["input_ids"]) <= MAX_SEQ_LENGTH
        if not training:  # evaluation scores every example
            covered = {meta.get("example_index", index) for index, meta in enumerate(encoded.metadata)}
            assert len(covered) == len(examples)


@pytest.mark.parametrize("name", list(WRITERS))
def test_fuzz_benchmark_reader(tmp_path: Path, name: str, tiny_tokenizer) -> None:
    file_name, write = WRITERS[name]
    write(tmp_path / "valid", 6, seed=1)
    valid = (tmp_path / "valid").read_bytes()
    path = tmp_path / file_name

    def case(corruptions) -> None:
        path.write_bytes(apply_file_corruptions(valid, corruptions))
        outcome(lambda: read_and_encode(get_task(name), path, tiny_tokenizer), path)

    run_fuzz(file_corruptions(json_file=name == "korquad", columns=name != "korquad"), case)


# ------------------------------------------------------------------ filters that leave nothing


def test_paws_with_only_untranslated_rows_says_how_many_were_dropped(tmp_path: Path) -> None:
    path = tmp_path / "translated_train.tsv"
    path.write_text("id\tsentence1\tsentence2\tlabel\n1\tNS\t문장\t0\n2\t문장\tNS\t1\n", encoding="utf-8")
    with pytest.raises(ReforBertInputError, match=r"translated_train\.tsv: .*2 .*untranslated"):
        get_task("paws").read(path)


@pytest.mark.parametrize("encoding", ["cp949", "utf-16"])
def test_wrong_encoding_names_file_and_line(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "ratings_test.txt"
    path.write_bytes("id\tdocument\tlabel\n1\tabc\t0\n2\t재미있다\t1\n".encode(encoding))
    line = 1 if encoding == "utf-16" else 3  # the UTF-16 byte-order mark breaks the first line
    with pytest.raises(ReforBertInputError, match=rf"ratings_test\.txt:{line}: .*UTF-8"):
        get_task("nsmc").read(path)


def test_negative_answer_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    qa = {"id": "q1", "question": "무엇?", "answers": [{"text": "사과", "answer_start": -2}]}
    path.write_text(
        json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "사과다", "qas": [qa]}]}]}),
        encoding="utf-8",
    )
    with pytest.raises(ReforBertInputError, match=r"dev\.json: .*q1.*answer_start"):
        get_task("korquad").read(path)
