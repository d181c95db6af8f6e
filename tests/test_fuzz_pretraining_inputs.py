"""Fuzzing what `reforbert vocab`, `reforbert pretraining-data` and `reforbert pretrain` read.

Corpus text (a title line, one paragraph per line, a blank line between documents), the vocabulary
folder (SentencePiece model and vocab, Hugging Face tokenizer files) and the binary shard folder are
each corrupted and read as the commands read them. A case ends in a correct result (instances whose
ids the vocabulary knows) or in one ``ReforBertInputError`` naming the file; the output folder of
``pretraining-data`` exists only on success, with no temporary folder left beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fuzzing import (
    apply_file_corruptions,
    assert_one_line_error,
    error_lines,
    file_corruptions,
    leftovers,
    outcome,
    run_cli,
    run_fuzz,
)
from test_fuzz_models import copy_with_one_file_corrupted, one_file_corruptions

from reforbert.cli import main as cli_main
from reforbert.configuration_reforbert import CLS_ID, SEP_ID
from reforbert.data.corpus import iter_documents, split_sentences
from reforbert.data.pretraining_data import make_pretraining_data
from reforbert.data.shards import ShardWriter, open_pretraining_data
from reforbert.data.vocab import load_sentencepiece, train_vocab
from reforbert.finetuning import load_tokenizer

WORDS = ["하늘", "바다", "사과", "포도", "정답은", "무엇", "좋다", "같다", "철수", "영희"]


def corpus_text(documents: int) -> str:
    blocks = []
    for number in range(documents):
        paragraphs = [
            " ".join(
                f"{WORDS[(number + i + j) % len(WORDS)]}는 {WORDS[(i * j) % len(WORDS)]}이다."
                for j in range(3)
            )
            for i in range(3)
        ]
        blocks.append("\n".join([f"제목 {number}", *paragraphs]))
    return "\n\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-pretraining")
    (folder / "corpus.txt").write_text(corpus_text(40), encoding="utf-8")
    return train_vocab([folder / "corpus.txt"], folder / "vocab", vocab_size=40, progress=False)


def check_pretraining_data(corpus: Path, vocab: Path, output: Path, *named: Path) -> None:
    metadata, error = outcome(
        lambda: make_pretraining_data(
            [corpus], vocab, output, max_seq_len=32, workers=1, progress=False, block_bytes=1 << 12
        ),
        *named,
    )
    if error is None:
        dataset = open_pretraining_data(output)
        assert len(dataset) == metadata["num_instances"] > 0
        for index in range(len(dataset)):
            ids = dataset[index]["input_ids"]
            assert ids[0] == CLS_ID and ids[-1] == SEP_ID and int(ids.max()) < metadata["vocab_size"]
        shutil.rmtree(output)
    assert not output.exists()
    assert leftovers(output.parent) == []


def test_fuzz_corpus_text(tmp_path: Path, vocab_dir: Path) -> None:
    corpus, output = tmp_path / "corpus.txt", tmp_path / "out" / "data"
    output.parent.mkdir()
    valid = corpus_text(4).encode("utf-8")

    def case(corruptions) -> None:
        corpus.write_bytes(apply_file_corruptions(valid, corruptions))
        # What `reforbert vocab` samples, then what `reforbert pretraining-data` makes of it.
        sentences, _ = outcome(
            lambda: [s for document in iter_documents(corpus) for p in document for s in split_sentences(p)],
            corpus,
        )
        assert sentences is None or all(sentence.strip() for sentence in sentences)
        check_pretraining_data(corpus, vocab_dir, output, corpus)

    run_fuzz(file_corruptions(), case)


def test_fuzz_vocabulary_folder(tmp_path: Path, vocab_dir: Path) -> None:
    corpus, folder, output = tmp_path / "corpus.txt", tmp_path / "vocab", tmp_path / "out" / "data"
    corpus.write_text(corpus_text(4), encoding="utf-8")
    output.parent.mkdir()

    def case(drawn: tuple) -> None:
        copy_with_one_file_corrupted(vocab_dir, folder, *drawn)
        # The SentencePiece side (pretraining data) and the Hugging Face side (fine-tuning's tokenizer).
        processor, _ = outcome(lambda: load_sentencepiece(folder / "sentencepiece.model"), folder)
        if processor is not None:
            assert processor.encode("하늘은 바다") and processor.get_piece_size() > 7
        check_pretraining_data(corpus, folder, output, folder)
        tokenizer, _ = outcome(lambda: load_tokenizer(folder), folder)
        if tokenizer is not None:
            ids = tokenizer("하늘은 바다", "사과")["input_ids"]
            assert ids[0] == CLS_ID and ids[-1] == SEP_ID

    run_fuzz(one_file_corruptions(vocab_dir), case)


# ------------------------------------------------------------------ shards

VOCAB_SIZE = 47


def write_valid_shards(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, shard_tokens=64)
    for _ in range(3):  # three blocks of four instances: two shards
        tokens, lengths, boundaries = [], [], []
        for _ in range(4):
            a, b = rng.integers(7, VOCAB_SIZE, size=rng.integers(2, 6)), rng.integers(7, VOCAB_SIZE, size=3)
            tokens.append(np.concatenate([[CLS_ID], a, [SEP_ID], b, [SEP_ID]]))
            lengths.append(len(tokens[-1]))
            boundaries.append(len(a) + 2)
        writer.add(
            np.concatenate(tokens), np.array(lengths), np.array(boundaries), rng.integers(0, 2, size=4)
        )
    writer.close({"vocab_sha256": "0" * 64, "vocab_size": VOCAB_SIZE, "max_seq_len": 16})
    return folder


def read_every_instance(folder: Path) -> None:
    dataset = open_pretraining_data(folder)
    vocab_size = dataset.metadata["vocab_size"]
    for index in range(len(dataset)):
        item = dataset[index]
        ids, types = item["input_ids"], item["token_type_ids"]
        assert ids.ndim == 1 and len(ids) == len(types) > 0
        assert int(ids.min()) >= 0 and int(ids.max()) < vocab_size
        assert set(types.tolist()) <= {0, 1} and item["next_sentence_label"] in (0, 1)


def test_fuzz_shard_folder(tmp_path: Path) -> None:
    valid = write_valid_shards(tmp_path / "valid")
    assert len(json.loads((valid / "metadata.json").read_text())["shards"]) == 2
    folder = tmp_path / "shards"

    def case(drawn: tuple) -> None:
        copy_with_one_file_corrupted(valid, folder, *drawn)
        outcome(lambda: read_every_instance(folder), folder)

    run_fuzz(one_file_corruptions(valid), case)


# ------------------------------------------------------------------ the command line


def test_cli_vocab_and_pretraining_data_on_cp949_corpus(tmp_path: Path, vocab_dir: Path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(corpus_text(3).encode("cp949"))
    result = run_cli("vocab", str(corpus), "--output", str(tmp_path / "vocab"), "--vocab-size", "40")
    assert_one_line_error(result, "vocab", f"{corpus}:1:", "UTF-8")
    output = tmp_path / "data"
    code = cli_main(["pretraining-data", str(corpus), "--vocab", str(vocab_dir), "--output", str(output)])
    errors = error_lines(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1 and f"{corpus}:1:" in errors[0], errors
    assert not output.exists() and not (tmp_path / "vocab").exists() and leftovers(tmp_path) == []


def test_cli_pretrain_on_truncated_shard(tmp_path: Path, vocab_dir: Path) -> None:
    data = write_valid_shards(tmp_path / "data")
    tokens = data / "shard-00000.tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:100])
    result = run_cli(
        "pretrain", "--data", str(data), "--vocab", str(vocab_dir), "--output", str(tmp_path / "run"),
        "--preset", "tiny", "--max-steps", "1",
    )  # fmt: skip
    assert_one_line_error(result, "pretrain", str(data))
    assert not (tmp_path / "run" / "model").exists()
