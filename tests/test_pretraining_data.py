"""MLM + NSP instances: layout, NSP balance and truth, formats, determinism, bad input."""

from __future__ import annotations

import filecmp
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_vocab import write_synthetic_corpus

from reforbert.cli import main as cli_main
from reforbert.configuration_reforbert import CLS_ID, IGNORE_INDEX, SEP_ID
from reforbert.data.collator import PretrainingCollator
from reforbert.data.pretraining_data import make_pretraining_data
from reforbert.data.shards import check_vocab, open_pretraining_data
from reforbert.data.vocab import train_vocab
from reforbert.errors import ReforBertInputError

SENTENCE = re.compile(r"문서 (\d+) 의 문장 (\d+) 입니다")


def write_numbered_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    """Every sentence says which document and which sentence it is, so pairs can be checked."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(documents):
            handle.write(f"제목 {number}\n")
            sentence = 0
            for _ in range(rng.randint(1, 4)):
                paragraph = []
                for _ in range(rng.randint(1, 4)):
                    paragraph.append(f"문서 {number} 의 문장 {sentence} 입니다.")
                    sentence += 1
                handle.write(" ".join(paragraph) + "\n")
            handle.write("\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretraining")
    corpus = write_numbered_corpus(root / "numbered.txt", documents=1500)
    mixed = write_synthetic_corpus(root / "mixed.txt", documents=300, seed=3)
    vocab = train_vocab([corpus, mixed], root / "vocab", vocab_size=300)
    return {"root": root, "corpus": corpus, "mixed": mixed, "vocab": vocab}


@pytest.fixture(scope="module")
def shard_data(setup) -> Path:
    output = setup["root"] / "shards"
    make_pretraining_data(
        [setup["corpus"]],
        setup["vocab"],
        output,
        max_seq_len=48,
        dupe_factor=3,
        workers=1,
        progress=False,
        block_bytes=1 << 16,
        shard_tokens=20_000,
    )
    return output


def decode(processor, ids: list[int]) -> list[tuple[int, int]]:
    return [(int(d), int(s)) for d, s in SENTENCE.findall(processor.decode(ids))]


def test_instance_layout_and_nsp_truth(setup, shard_data: Path) -> None:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(setup["vocab"] / "sentencepiece.model"))
    dataset = open_pretraining_data(shard_data)
    metadata = json.loads((shard_data / "metadata.json").read_text())
    assert len(metadata["shards"]) > 1  # small shards exercise the shard index
    assert len(dataset) == metadata["num_instances"] == metadata["statistics"]["instances"] > 5000
    labels, checked = [], [0, 0]
    for index in range(len(dataset)):
        item = dataset[index]
        ids, types = item["input_ids"].tolist(), item["token_type_ids"].tolist()
        assert len(ids) <= 48
        boundary = types.index(1)
        assert ids[0] == CLS_ID and ids[boundary - 1] == SEP_ID and ids[-1] == SEP_ID
        assert types == [0] * boundary + [1] * (len(ids) - boundary)
        assert SEP_ID not in ids[1 : boundary - 1] + ids[boundary:-1] and CLS_ID not in ids[1:]
        labels.append(item["next_sentence_label"])
        a, b = decode(processor, ids[1 : boundary - 1]), decode(processor, ids[boundary:-1])
        if a and b:
            checked[item["next_sentence_label"]] += 1
            if item["next_sentence_label"] == 0:  # B follows A in the same document
                assert {d for d, _ in a + b} == {a[0][0]}
                numbers = [s for _, s in a + b]
                assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
            else:  # B comes from another document
                assert {d for d, _ in a}.isdisjoint({d for d, _ in b})
    assert min(checked) > 1000  # the text really was decoded and compared
    positives = labels.count(0) / len(labels)
    assert abs(positives - 0.5) < 0.02


def test_short_seq_prob_makes_some_short_instances(setup, shard_data: Path) -> None:
    dataset = open_pretraining_data(shard_data)
    lengths = np.array([len(dataset[i]["input_ids"]) for i in range(len(dataset))])
    assert (lengths == 48).mean() > 0.3  # most fill the sequence (documents allowing)
    assert (lengths < 20).mean() > 0.02


def test_same_seed_same_bytes_for_any_worker_count(setup, tmp_path: Path) -> None:
    files = [setup["corpus"], setup["mixed"]]
    kwargs = {"max_seq_len": 64, "progress": False, "block_bytes": 1 << 15}
    one = make_pretraining_data(files, setup["vocab"], tmp_path / "one", workers=1, **kwargs)
    two = make_pretraining_data(files, setup["vocab"], tmp_path / "two", workers=2, **kwargs)
    other = make_pretraining_data(files, setup["vocab"], tmp_path / "other", workers=1, seed=1, **kwargs)
    assert one == two
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "one", tmp_path / "two", names, shallow=False)
    assert mismatch == [] and errors == []
    assert not filecmp.cmp(
        tmp_path / "one" / "shard-00000.tokens.npy",
        tmp_path / "other" / "shard-00000.tokens.npy",
        shallow=False,
    )
    assert other["num_instances"] > 0


def test_jsonl_round_trip_matches_the_shards(setup, tmp_path: Path) -> None:
    kwargs = {"max_seq_len": 64, "progress": False, "workers": 1}
    make_pretraining_data([setup["mixed"]], setup["vocab"], tmp_path / "bin", **kwargs)
    make_pretraining_data([setup["mixed"]], setup["vocab"], tmp_path / "json", jsonl=True, count=3, **kwargs)
    files = sorted((tmp_path / "json").glob("instances_*.json"))
    assert len(files) == 3
    record = json.loads(files[0].read_text(encoding="utf-8").splitlines()[0])
    assert set(record) == {"tokens", "segment", "is_next", "mask_idx", "mask_label"}
    assert record["tokens"][0] == "[CLS]" and record["tokens"][-1] == "[SEP]"
    assert len(record["mask_idx"]) == len(record["mask_label"]) >= 1

    shards, lines = open_pretraining_data(tmp_path / "bin"), open_pretraining_data(tmp_path / "json")
    assert len(shards) == len(lines)
    # Files are filled round-robin: instance k is line k // 3 of file k % 3.
    by_order = {}
    for index in range(len(lines)):
        item = lines[index]
        file, line = lines._index[index][0], lines._index[index][2]
        by_order[(line - 1) * 3 + file] = item
    masked = total = 0
    for k in range(len(shards)):
        original, item = shards[k], by_order[k]
        restored = torch.where(item["labels"] != IGNORE_INDEX, item["labels"], item["input_ids"])
        assert torch.equal(restored, original["input_ids"])
        assert torch.equal(item["token_type_ids"], original["token_type_ids"])
        assert item["next_sentence_label"] == original["next_sentence_label"]
        masked += (item["labels"] != IGNORE_INDEX).sum().item()
        total += len(restored) - 3
    assert 0.13 < masked / total < 0.18
    # The collator keeps the static masks of JSON lines.
    batch = PretrainingCollator(307)([lines[0], lines[1]])
    assert torch.equal(batch["labels"][0, : len(lines[0]["labels"])], lines[0]["labels"])


def test_check_vocab_refuses_another_vocabulary(setup, shard_data: Path, tmp_path: Path) -> None:
    dataset = open_pretraining_data(shard_data)
    check_vocab(dataset.metadata, setup["vocab"])
    other = train_vocab([setup["mixed"]], tmp_path / "other", vocab_size=250)
    with pytest.raises(ReforBertInputError, match="another vocabulary") as error:
        check_vocab(dataset, other)
    assert str(other / "sentencepiece.model") in str(error.value)


def test_collator_batches_shard_items(shard_data: Path) -> None:
    dataset = open_pretraining_data(shard_data)
    batch = PretrainingCollator(307, seed=1)([dataset[i] for i in range(8)])
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"][:, 0].eq(CLS_ID).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) >= 1).all()
    assert set(batch["next_sentence_label"].tolist()) <= {0, 1}


@pytest.mark.parametrize("problem", ["missing", "empty", "utf8", "exists", "no_vocab"])
def test_bad_input_one_line_error_exit_2(setup, tmp_path: Path, problem: str, capsys) -> None:
    corpus, vocab, output = tmp_path / "corpus.txt", setup["vocab"], tmp_path / "out"
    corpus.write_text("제목\n문서 1 의 문장 1 입니다.\n\n", encoding="utf-8")
    expected = str(corpus)
    if problem == "missing":
        corpus.unlink()
    elif problem == "empty":
        corpus.write_text("\n \n", encoding="utf-8")
    elif problem == "utf8":
        corpus.write_bytes("제목\n좋은 줄.\n\n제목\n".encode() + b"\xc3\x28 nope\n")
        expected = f"{corpus}:5:"
    elif problem == "exists":
        output.mkdir()
        (output / "keep.txt").write_text("mine")
        expected = str(output)
    elif problem == "no_vocab":
        vocab = tmp_path / "novocab"
        expected = str(vocab / "sentencepiece.model")
    code = cli_main(
        ["pretraining-data", str(corpus), "--vocab", str(vocab), "--output", str(output), "--workers", "1"]
    )
    # The progress bar shares stderr; the error itself is one line.
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2
    assert len(errors) == 1 and expected in errors[0]
    if problem == "exists":
        assert [p.name for p in output.iterdir()] == ["keep.txt"]
    else:
        assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_open_pretraining_data_errors(tmp_path: Path) -> None:
    with pytest.raises(ReforBertInputError, match="no such file"):
        open_pretraining_data(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.json").write_text('{"tokens": ["[CLS]"]}\nnot json\n', encoding="utf-8")
    (broken / "sentencepiece.vocab").write_text("[PAD]\t0\n[CLS]\t0\n", encoding="utf-8")
    dataset = open_pretraining_data(broken)
    with pytest.raises(ReforBertInputError, match=r"a\.json:2:"):
        dataset[1]


def test_shard_dataset_pickles_paths_not_data(shard_data: Path) -> None:
    import pickle

    dataset = open_pretraining_data(shard_data)
    blob = pickle.dumps(dataset)  # what a "spawn" data-loader worker receives
    assert len(blob) < 20_000 < sum(p.stat().st_size for p in shard_data.glob("*.tokens.npy"))
    clone = pickle.loads(blob)
    assert torch.equal(clone[len(dataset) - 1]["input_ids"], dataset[len(dataset) - 1]["input_ids"])


def test_cli_jsonl_whole_word_masking(setup, tmp_path: Path) -> None:
    output = tmp_path / "wwm"
    code = cli_main(
        [
            "pretraining-data",
            str(setup["mixed"]),
            "--vocab",
            str(setup["vocab"]),
            "--output",
            str(output),
            "--jsonl",
            "--whole-word-mask",
            "--count",
            "1",
            "--max-seq-len",
            "64",
            "--mlm-probability",
            "0.3",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    records = [
        json.loads(line) for line in (output / "instances_0.json").read_text(encoding="utf-8").splitlines()
    ]
    continuations = 0
    for record in records:
        original = list(record["tokens"])
        for position, piece in zip(record["mask_idx"], record["mask_label"], strict=True):
            original[position] = piece
        masked = set(record["mask_idx"])
        for position in range(2, len(original) - 1):
            piece, before = original[position], original[position - 1]
            if not piece.startswith("\u2581") and not piece.startswith("[") and not before.startswith("["):
                continuations += 1
                assert (position in masked) == (position - 1 in masked)  # a word is masked whole or not
    assert continuations > 1000


def test_whole_word_mask_without_jsonl_is_refused(setup, tmp_path: Path, capsys) -> None:
    """Shards are masked while training, so the flag would silently do nothing there."""
    output = tmp_path / "shards"
    argv = ["pretraining-data", str(setup["mixed"]), "--vocab", str(setup["vocab"]), "-o", str(output)]
    assert cli_main([*argv, "--whole-word-mask", "--workers", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--whole-word-mask applies only to --jsonl" in error
    assert not output.exists()
