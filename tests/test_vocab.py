"""The vocabulary folder: fixed special ids, Hugging Face ids equal to SentencePiece ids, bad input."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from vocabulary_editing import edited_vocabulary

from reforbert.cli import main as cli_main
from reforbert.configuration_reforbert import SPECIAL_TOKENS
from reforbert.data.vocab import train_vocab
from reforbert.errors import ReforBertInputError

SHARED_DATA = Path(
    os.environ.get("REFORBERT_SHARED_DATA", Path(__file__).parents[1].parent / "shared" / "data")
)
SMALL_VOCAB = 400

NOUNS = [
    "서울",
    "대통령",
    "학교",
    "도서관",
    "강물",
    "컴퓨터",
    "과학자",
    "음악",
    "바다",
    "산맥",
    "철도",
    "역사",
    "정부",
    "시장",
    "축구",
    "영화",
    "소설",
    "언어",
    "기차",
    "병원",
    "대학교",
    "도시",
    "마을",
    "전쟁",
]
PARTICLES = ["은", "는", "이", "가", "을", "를", "에서", "으로", "의", "와", "도"]
VERBS = ["태어났다", "설립되었다", "발표하였다", "졸업하였다", "알려졌다", "사용된다", "위치한다", "열렸다"]
LATIN = ["Reformer", "BERT", "Seoul", "LSH", "API", "Python", "GPU"]


def synthetic_sentence(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(3, 8)):
        kind = rng.random()
        if kind < 0.7:
            words.append(rng.choice(NOUNS) + rng.choice(PARTICLES))
        elif kind < 0.85:
            words.append(f"{rng.randint(1, 2020)}년")
        else:
            words.append(f"({rng.choice(LATIN)})")
    return " ".join(words) + " " + rng.choice(VERBS) + "."


def write_synthetic_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    """The corpus format: a title line, one paragraph per line, a blank line between documents."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(documents):
            handle.write(f"{rng.choice(NOUNS)} {number}\n")
            for _ in range(rng.randint(1, 4)):
                handle.write(" ".join(synthetic_sentence(rng) for _ in range(rng.randint(1, 4))) + "\n")
            handle.write("\n")
    return path


def sample_lines() -> list[str]:
    rng = random.Random(99)
    lines = [synthetic_sentence(rng) for _ in range(250)]
    lines += [
        "  앞뒤 공백과   여러 칸   공백  ",
        "숫자 123,456.78 과 기호 ~!@#",
        "Mixed 한국어 and English 문장.",
        "처음 보는 글자 鬱 과 이모지 🙂",
        "탭\t문자",
        "",
    ]
    return lines


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vocab")
    corpus = write_synthetic_corpus(root / "corpus.txt", documents=400)
    return train_vocab([corpus], root / "vocab", vocab_size=SMALL_VOCAB)


def test_files_and_fixed_special_ids(small_vocab: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    for name in ("sentencepiece.model", "sentencepiece.vocab", "tokenizer.json", "tokenizer_config.json"):
        assert (small_vocab / name).is_file()
    processor = spm.SentencePieceProcessor(model_file=str(small_vocab / "sentencepiece.model"))
    assert processor.get_piece_size() == SMALL_VOCAB + len(SPECIAL_TOKENS)
    tokenizer = AutoTokenizer.from_pretrained(small_vocab)
    assert tokenizer.is_fast
    assert len(tokenizer) == SMALL_VOCAB + len(SPECIAL_TOKENS)
    for piece, index in SPECIAL_TOKENS.items():
        assert processor.piece_to_id(piece) == index
        assert tokenizer.convert_tokens_to_ids(piece) == index
    assert (
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.mask_token_id,
    ) == (0, 1, 5, 4, 6)
    lines = (small_vocab / "sentencepiece.vocab").read_text(encoding="utf-8").splitlines()
    assert len(lines) == SMALL_VOCAB + len(SPECIAL_TOKENS)
    assert [line.split("\t")[0] for line in lines[:7]] == list(SPECIAL_TOKENS)
    assert all(len(line.split("\t")) == 2 for line in lines)
    float(lines[-1].split("\t")[1])


def test_saved_tokenizer_declares_what_the_model_takes(small_vocab: Path, caplog) -> None:
    """Not the pretraining length: ``truncation=True`` must keep a long document whole, as the model can."""
    import json

    from transformers import AutoTokenizer

    from reforbert.configuration_reforbert import ReforBertConfig

    longest = ReforBertConfig().max_position_embeddings
    assert longest == 65_536  # the default axial shape, 256 x 256
    saved = json.loads((small_vocab / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert saved["model_max_length"] == longest
    tokenizer = AutoTokenizer.from_pretrained(small_vocab)
    document = " ".join(sample_lines())
    whole = tokenizer(document)["input_ids"]
    assert 1_000 < len(whole) < longest
    assert tokenizer(document, truncation=True)["input_ids"] == whole
    assert "indexing errors" not in caplog.text


def test_a_copied_tokenizer_can_be_told_what_its_model_takes(small_vocab: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    from reforbert.data.vocab import set_model_max_length

    folder = tmp_path / "model"
    shutil.copytree(small_vocab, folder)
    set_model_max_length(folder, 128)  # what a vocabulary made for a 128-token demo used to declare
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 128
    set_model_max_length(folder, 4096)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 4096
    original = AutoTokenizer.from_pretrained(small_vocab)
    assert tokenizer("서울 대통령")["input_ids"] == original("서울 대통령")["input_ids"]


def test_hugging_face_ids_equal_sentencepiece_ids(small_vocab: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    processor = spm.SentencePieceProcessor(model_file=str(small_vocab / "sentencepiece.model"))
    tokenizer = AutoTokenizer.from_pretrained(small_vocab)
    lines = sample_lines()
    expected = processor.encode(lines)
    actual = tokenizer(lines, add_special_tokens=False)["input_ids"]
    mismatches = [line for line, a, b in zip(lines, actual, expected, strict=True) if a != b]
    assert mismatches == []
    assert any(1 in ids for ids in expected)  # the unseen characters really hit [UNK]


def test_pairs_get_bert_template_types_and_offsets(small_vocab: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_vocab)
    first, second = "서울은 도시이다.", "철도가 열렸다."
    encoded = tokenizer(first, second, return_offsets_mapping=True)
    ids, types = encoded["input_ids"], encoded["token_type_ids"]
    n_a = len(tokenizer(first, add_special_tokens=False)["input_ids"])
    n_b = len(tokenizer(second, add_special_tokens=False)["input_ids"])
    assert len(ids) == n_a + n_b + 3
    assert ids[0] == SPECIAL_TOKENS["[CLS]"]
    assert ids[n_a + 1] == SPECIAL_TOKENS["[SEP]"] and ids[-1] == SPECIAL_TOKENS["[SEP]"]
    assert types == [0] * (n_a + 2) + [1] * (n_b + 1)
    offsets = encoded["offset_mapping"]
    assert offsets[0] == (0, 0)
    assert first[offsets[1][0] : offsets[n_a][1]].strip() == first


def test_unigram_option(tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    corpus = write_synthetic_corpus(tmp_path / "corpus.txt", documents=300)
    folder = train_vocab([corpus], tmp_path / "vocab", vocab_size=200, model_type="unigram")
    processor = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.model"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lines = sample_lines()[:100]
    assert tokenizer(lines, add_special_tokens=False)["input_ids"] == processor.encode(lines)
    assert processor.id_to_piece(6) == "[MASK]"


def test_too_small_corpus_names_the_largest_size(tmp_path: Path) -> None:
    corpus = write_synthetic_corpus(tmp_path / "corpus.txt", documents=20)
    with pytest.raises(ReforBertInputError, match=r"largest vocabulary it supports is --vocab-size \d+"):
        train_vocab([corpus], tmp_path / "vocab")
    assert not (tmp_path / "vocab").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]  # no temporary folder left
    with pytest.raises(ReforBertInputError, match=r"use at least --vocab-size \d+"):
        train_vocab([corpus], tmp_path / "vocab", vocab_size=10)


def test_refuses_to_overwrite(tmp_path: Path, small_vocab: Path) -> None:
    corpus = write_synthetic_corpus(tmp_path / "corpus.txt", documents=300)
    existing = tmp_path / "vocab"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ReforBertInputError, match="already exists"):
        train_vocab([corpus], existing, vocab_size=300)
    assert (existing / "keep.txt").read_text() == "mine"
    train_vocab([corpus], existing, vocab_size=300, overwrite=True)
    assert not (existing / "keep.txt").exists()
    assert (existing / "sentencepiece.model").is_file()


@pytest.mark.parametrize("problem", ["missing", "empty", "utf8"])
def test_bad_corpus_gives_one_line_error_and_exit_2(tmp_path: Path, problem: str, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    if problem == "empty":
        corpus.write_text("\n\n\n", encoding="utf-8")
    elif problem == "utf8":
        corpus.write_bytes("제목\n좋은 줄.\n".encode() + b"\xff\xfe bad\n")
    code = cli_main(["vocab", str(corpus), "--output", str(tmp_path / "vocab"), "--vocab-size", "50"])
    # The progress bar shares stderr; the error itself is one line.
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2
    assert len(errors) == 1
    error = errors[0]
    assert str(corpus) in error
    if problem == "utf8":
        assert f"{corpus}:3:" in error and "UTF-8" in error
    assert not (tmp_path / "vocab").exists()


def kowiki_lines(limit_bytes: int) -> list[str]:
    """WikiExtractor paragraphs (the <doc> markup dropped) from the shared Korean Wikipedia text."""
    folder = SHARED_DATA / "kowiki" / "AA"
    lines: list[str] = []
    size = 0
    for file in sorted(folder.iterdir()):
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith(("<doc", "</doc")):
                lines.append(line.strip())
                size += len(line.encode("utf-8"))
        if size >= limit_bytes:
            break
    return lines


@pytest.mark.skipif(
    not (SHARED_DATA / "kowiki" / "AA").is_dir(), reason="shared Korean Wikipedia text is absent"
)
def test_real_kowiki_vocab_matches_between_tokenizers(tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    lines = kowiki_lines(4_000_000)
    train_lines = lines[: len(lines) // 2]  # about 2 MB
    corpus = tmp_path / "kowiki.txt"
    corpus.write_text("제목\n" + "\n".join(train_lines) + "\n", encoding="utf-8")
    folder = train_vocab([corpus], tmp_path / "vocab", sample_sentences=200_000)
    processor = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.model"))
    assert processor.get_piece_size() == 8007
    tokenizer = AutoTokenizer.from_pretrained(folder)
    check = lines[:6000] + lines[-6000:]  # seen and unseen text
    assert len(check) >= 10_000
    expected = processor.encode(check)
    actual = tokenizer(check, add_special_tokens=False)["input_ids"]
    mismatches = [line for line, a, b in zip(check, actual, expected, strict=True) if a != b]
    assert mismatches == []


def test_byte_fallback_spells_unseen_characters_in_bytes(tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    corpus = write_synthetic_corpus(tmp_path / "corpus.txt", documents=400)
    folder = train_vocab(
        [corpus], tmp_path / "vocab", vocab_size=SMALL_VOCAB + 256, byte_fallback=True, progress=False
    )
    processor = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.model"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == SMALL_VOCAB + 256 + len(SPECIAL_TOKENS)
    assert processor.id_to_piece(6) == "[MASK]"  # the specials keep their ids
    lines = sample_lines() + ["영화 재밌다 ㅋㅋ ♥"]  # characters the synthetic corpus never has
    expected = processor.encode(lines)
    assert tokenizer(lines, add_special_tokens=False)["input_ids"] == expected
    assert not any(SPECIAL_TOKENS["[UNK]"] in ids for ids in expected)
    assert tokenizer.decode(
        tokenizer("처음 보는 글자 鬱 과 이모지 🙂")["input_ids"], skip_special_tokens=True
    ) == ("처음 보는 글자 鬱 과 이모지 🙂")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"byte_fallback": True, "vocab_size": 256}, "byte fallback takes 256"),
        ({"character_coverage": 0.5}, "character coverage must be in"),
    ],
)
def test_vocabulary_options_out_of_range_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    corpus = write_synthetic_corpus(tmp_path / "corpus.txt", documents=20)
    with pytest.raises(ReforBertInputError, match=message):
        train_vocab([corpus], tmp_path / "vocab", progress=False, **options)
    assert not (tmp_path / "vocab").exists()


def test_two_trainings_of_one_vocabulary_share_a_fingerprint(small_vocab: Path, tmp_path: Path) -> None:
    from reforbert.data.vocab import vocabulary_fingerprint

    # The same corpus and settings again: the model file records another scratch path, nothing else.
    again = train_vocab([small_vocab.parent / "corpus.txt"], tmp_path / "again", vocab_size=SMALL_VOCAB)
    first, second = small_vocab / "sentencepiece.model", again / "sentencepiece.model"
    assert first.read_bytes() != second.read_bytes()
    assert vocabulary_fingerprint(first) == vocabulary_fingerprint(second)

    def rescore(proto) -> None:
        proto.pieces[20].score += 1.0

    rescored = edited_vocabulary(small_vocab, tmp_path / "rescored", rescore)
    assert vocabulary_fingerprint(rescored / "sentencepiece.model") != vocabulary_fingerprint(first)
    (tmp_path / "broken.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ReforBertInputError, match="not a SentencePiece model"):
        vocabulary_fingerprint(tmp_path / "broken.model")


def test_data_is_checked_against_the_fingerprint_and_older_data_against_the_file_digest(
    small_vocab: Path, tmp_path: Path
) -> None:
    from reforbert.data.shards import check_vocab
    from reforbert.data.vocab import vocabulary_fingerprint
    from reforbert.fileio import sha256_of

    def move_scratch(proto) -> None:
        # Another run on another machine: another scratch path and thread count, a default written out.
        proto.trainer_spec.input[:] = ["/elsewhere/sentences.txt"]
        proto.trainer_spec.num_threads = 16
        proto.trainer_spec.byte_fallback = False

    retrained = edited_vocabulary(small_vocab, tmp_path / "retrained", move_scratch)
    model_file = small_vocab / "sentencepiece.model"
    check_vocab({"vocab_fingerprint": vocabulary_fingerprint(model_file)}, retrained)
    with pytest.raises(ReforBertInputError, match="made with another vocabulary"):
        check_vocab({"vocab_fingerprint": "0" * 64}, retrained)
    check_vocab({"vocab_sha256": sha256_of(model_file)}, small_vocab)
    with pytest.raises(ReforBertInputError, match="made with another vocabulary"):
        check_vocab({"vocab_sha256": sha256_of(model_file)}, retrained)
