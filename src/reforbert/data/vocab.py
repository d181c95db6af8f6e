"""``reforbert vocab``: train the SentencePiece vocabulary and write it in two forms.

The folder holds ``sentencepiece.model`` / ``sentencepiece.vocab`` (piece TAB score, the seed's
layout) and the Hugging Face fast-tokenizer files, so ``AutoTokenizer.from_pretrained(folder)``
encodes exactly like SentencePiece and adds ``[CLS] A [SEP] B [SEP]`` with token_type_ids.

The 7 specials sit at fixed ids ([PAD]=0 ... [MASK]=6, see ``configuration_reforbert``); the
requested number of pieces comes on top of them (8000 + 7 = 8007 by default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from reforbert.configuration_reforbert import NUM_SPECIAL_TOKENS, SPECIAL_TOKENS, ReforBertConfig
from reforbert.data.corpus import check_corpus_files, iter_documents, split_sentences
from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_directory, refuse_to_overwrite

DEFAULT_PIECES = 8000
# A uniform sample of 100K sentences (about 15 MB of Korean text) is plenty for 8000 pieces; a
# larger one mostly costs SentencePiece memory and time, which would then grow with the corpus.
DEFAULT_SAMPLE_SENTENCES = 100_000
# Korean has thousands of syllables; covering 99.95% of the sample's characters keeps the rarest out
# of the vocabulary (the released one reads 0.64% of NSMC review tokens as [UNK] because of it).
DEFAULT_CHARACTER_COVERAGE = 0.9995
# With byte fallback SentencePiece reserves one piece per byte value.
BYTE_PIECES = 256
# The two files SentencePiece trains, under the names every ReforBERT folder gives them.
SENTENCEPIECE_MODEL_FILE = "sentencepiece.model"
SENTENCEPIECE_VOCAB_FILE = "sentencepiece.vocab"  # piece TAB score, one line per id
# What the Hugging Face tokenizer saves beside them (which of these it writes depends on its version).
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# SentencePiece silently skips longer "sentences"; our sentences are far shorter.
MAX_SENTENCE_BYTES = 4192


# ----------------------------------------------------------------------------------------------
# Sampling the corpus's sentences (read by ``reforbert.data.corpus``)


def iter_sentences(files: Iterable[Path]) -> Iterator[str]:
    for file in files:
        for document in iter_documents(file):
            for paragraph in document:
                yield from split_sentences(paragraph)


def reservoir_sample(items: Iterable[str], size: int, seed: int) -> tuple[list[str], int]:
    """Uniform sample of ``size`` items in one pass and bounded memory (Vitter's algorithm R).

    Done here rather than by SentencePiece's own sampler so that the sample, and so the
    vocabulary, depends only on ``seed`` and the corpus.
    """
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for item in items:
        seen += 1
        if len(sample) < size:
            sample.append(item)
        else:
            slot = rng.randrange(seen)
            if slot < size:
                sample[slot] = item
    return sample, seen


# ----------------------------------------------------------------------------------------------
# Training


def _too_small_message(error: RuntimeError, pieces: int) -> str | None:
    match = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(error))
    if match is not None:
        smallest = int(match.group(2)) - NUM_SPECIAL_TOKENS
        return (
            f"{pieces} pieces cannot hold the corpus's {smallest} distinct characters; "
            f"use at least --vocab-size {smallest}"
        )
    match = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", str(error))
    if match is None:
        return None
    largest = int(match.group(2)) - NUM_SPECIAL_TOKENS
    return (
        f"the corpus is too small for {pieces} pieces; the largest vocabulary it supports is "
        f"--vocab-size {largest} (a real vocabulary needs far more text)"
    )


def _train_sentencepiece(
    sentence_file: Path,
    prefix: Path,
    pieces: int,
    model_type: str,
    character_coverage: float,
    byte_fallback: bool,
) -> None:
    import sentencepiece as spm

    specials = list(SPECIAL_TOKENS)
    spm.SentencePieceTrainer.train(
        input=str(sentence_file),
        model_prefix=str(prefix),
        vocab_size=pieces + NUM_SPECIAL_TOKENS,
        model_type=model_type,
        character_coverage=character_coverage,
        # With byte fallback, 256 of the pieces are the UTF-8 bytes: a character outside the
        # vocabulary is spelled in bytes instead of becoming [UNK].
        byte_fallback=byte_fallback,
        pad_id=SPECIAL_TOKENS["[PAD]"],
        pad_piece="[PAD]",
        unk_id=SPECIAL_TOKENS["[UNK]"],
        unk_piece="[UNK]",
        bos_id=SPECIAL_TOKENS["[BOS]"],
        bos_piece="[BOS]",
        eos_id=SPECIAL_TOKENS["[EOS]"],
        eos_piece="[EOS]",
        # The remaining specials follow the four control pieces, in id order.
        user_defined_symbols=specials[4:],
        input_sentence_size=0,  # the sample is already drawn
        max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )


def default_model_max_length() -> int:
    """The longest input a ReforBERT of the default shape takes (its axial positions, 65,536).

    The saved tokenizer declares this, not the pretraining length: ``tokenizer(text, truncation=True)``
    then keeps a long document whole (as the model can take it) instead of cutting it at 128 or 512.
    """
    return ReforBertConfig().max_position_embeddings


def build_fast_tokenizer(model_file: Path, model_max_length: int | None = None):
    """A ``PreTrainedTokenizerFast`` that reproduces SentencePiece's ids and adds BERT's template."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    scored = [(piece.piece, piece.score) for piece in proto.pieces]
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
        vocab = {piece: index for index, (piece, _) in enumerate(scored)}
    else:
        vocab = scored
    # transformers' own SentencePiece translation: normalizer, dummy prefix, merges by score.
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if tokenizer is None:
        raise RuntimeError(f"cannot convert {model_file} to a fast tokenizer")
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    return wrap_as_bert_tokenizer(tokenizer, model_max_length)


def wrap_as_bert_tokenizer(tokenizer, model_max_length: int | None = None):
    """A ``tokenizers.Tokenizer`` with ReforBERT's special ids as a Hugging Face fast tokenizer that
    encodes ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` with segment ids 0 / 1, as BERT does.

    ``model_max_length`` defaults to what the default model takes (:func:`default_model_max_length`)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    cls, sep = SPECIAL_TOKENS["[CLS]"], SPECIAL_TOKENS["[SEP]"]
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=model_max_length or default_model_max_length(),
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def set_model_max_length(folder: str | Path, model_max_length: int) -> None:
    """Make the Hugging Face tokenizer files in ``folder`` declare ``model_max_length``.

    For a model folder, whose tokenizer should say what that model takes, whatever the vocabulary
    folder it was copied from declared (folders made before this rule said the pretraining length).
    """
    path = Path(folder) / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["model_max_length"] = model_max_length
    path.write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def load_sentencepiece(model_file: Path):
    """The SentencePiece processor of a vocabulary; refuses a damaged model or one without our specials."""
    import sentencepiece as spm

    if not model_file.is_file():
        raise ReforBertInputError("vocabulary model is missing (run `reforbert vocab`)", model_file)
    try:
        processor = spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as error:
        raise ReforBertInputError(f"not a SentencePiece model ({error})", model_file) from None
    for piece, index in SPECIAL_TOKENS.items():
        if index >= processor.get_piece_size() or processor.id_to_piece(index) != piece:
            raise ReforBertInputError(f"not a ReforBERT vocabulary: id {index} is not {piece}", model_file)
    return processor


# The trainer settings that still change how a trained model encodes text; the others (input files, threads,
# sampling) only shaped the training run and differ between machines and runs.
ENCODING_TRAINER_FIELDS = (
    "model_type",
    "byte_fallback",
    "treat_whitespace_as_suffix",
    "allow_whitespace_only_pieces",
    "split_digits",
    "unk_surface",
    "unk_id",
    "bos_id",
    "eos_id",
    "pad_id",
    "unk_piece",
    "bos_piece",
    "eos_piece",
    "pad_piece",
    "user_defined_symbols",
    "control_symbols",
)


def _field_values(message: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The fields' values, a field left unset read as its default (SentencePiece writes some explicitly)."""
    known = message.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for name in known if names is None else (name for name in names if name in known):
        value = getattr(message, name)
        if isinstance(value, bytes):
            value = hashlib.sha256(value).hexdigest()
        elif not isinstance(value, (str, int, float, bool)):
            value = list(value)
        values[name] = value
    return values


def vocabulary_fingerprint(model_file: Path) -> str:
    """A sha256 of what fixes a SentencePiece model's ids: its pieces with scores and types, its normalizer,
    and the trainer settings that affect encoding (:data:`ENCODING_TRAINER_FIELDS`).

    The file's own digest tells two trainings of the same vocabulary apart: SentencePiece writes the
    scratch path of its sentence file, the thread count and every setting passed into the model.
    """
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    if not model_file.is_file():
        raise ReforBertInputError("vocabulary model is missing (run `reforbert vocab`)", model_file)
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except DecodeError as error:
        raise ReforBertInputError(f"not a SentencePiece model ({error})", model_file) from None
    if not proto.pieces:
        raise ReforBertInputError("not a SentencePiece model (no pieces)", model_file)
    content = {
        "pieces": [[piece.piece, piece.score, piece.type] for piece in proto.pieces],
        "normalizer": _field_values(proto.normalizer_spec),
        "denormalizer": _field_values(proto.denormalizer_spec),
        "trainer": _field_values(proto.trainer_spec, ENCODING_TRAINER_FIELDS),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def tokenizer_files(folder: str | Path) -> list[Path]:
    """The files of ``folder`` that make up the tokenizer, and nothing else: a model folder (the released
    checkpoint, say) serves as a vocabulary too, but its weights, config and card are another model's."""
    names = (SENTENCEPIECE_MODEL_FILE, SENTENCEPIECE_VOCAB_FILE, *HF_TOKENIZER_FILES)
    return [Path(folder) / name for name in names if (Path(folder) / name).is_file()]


def check_special_ids(folder: Path) -> int:
    """Verify the fixed special ids in both tokenizers; return the total vocabulary size."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(folder / SENTENCEPIECE_MODEL_FILE))
    for piece, index in SPECIAL_TOKENS.items():
        if processor.id_to_piece(index) != piece:
            raise RuntimeError(f"{piece} landed on id {processor.piece_to_id(piece)}, expected {index}")
    return processor.get_piece_size()


def train_vocab(
    corpus_files: Iterable[str | Path],
    output_dir: str | Path,
    *,
    vocab_size: int = DEFAULT_PIECES,
    model_type: str = "bpe",
    sample_sentences: int = DEFAULT_SAMPLE_SENTENCES,
    seed: int = 0,
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
    byte_fallback: bool = False,
    model_max_length: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train ``vocab_size`` pieces (+ 7 specials) on a seeded sample of the corpus sentences.

    Returns the vocabulary folder. Raises :class:`ReforBertInputError` for a missing, empty or
    non-UTF-8 corpus, a corpus too small for ``vocab_size``, or an existing ``output_dir``
    without ``overwrite``.
    """
    if model_type not in ("bpe", "unigram"):
        raise ReforBertInputError(f"model type must be bpe or unigram, not {model_type!r}")
    if vocab_size < 1:
        raise ReforBertInputError(f"vocab size must be positive, got {vocab_size}")
    if not 0.98 <= character_coverage <= 1.0:
        # SentencePiece's own range; outside it the trainer fails with an internal message.
        raise ReforBertInputError(f"character coverage must be in [0.98, 1], got {character_coverage}")
    if byte_fallback and vocab_size <= BYTE_PIECES:
        raise ReforBertInputError(
            f"byte fallback takes {BYTE_PIECES} of the pieces; use --vocab-size above {BYTE_PIECES}"
        )
    output_dir = Path(output_dir)
    files = check_corpus_files(corpus_files)
    refuse_to_overwrite(output_dir, overwrite)

    sentences = tqdm(
        iter_sentences(files), desc="sampling sentences", unit=" sentences", disable=not progress
    )
    sample, seen = reservoir_sample(sentences, sample_sentences, seed)
    if not sample:
        raise ReforBertInputError("the corpus has no text", files[0] if len(files) == 1 else None)

    with atomic_directory(output_dir) as folder, tempfile.TemporaryDirectory() as scratch:
        sentence_file = Path(scratch) / "sentences.txt"
        with open(sentence_file, "w", encoding="utf-8") as handle:
            for sentence in sample:
                handle.write(sentence.replace("\n", " ") + "\n")
        del sample
        prefix = Path(scratch) / "sentencepiece"
        try:
            _train_sentencepiece(
                sentence_file, prefix, vocab_size, model_type, character_coverage, byte_fallback
            )
        except RuntimeError as error:
            message = _too_small_message(error, vocab_size)
            if message is None:
                raise
            raise ReforBertInputError(message, files[0] if len(files) == 1 else None) from None
        shutil.copyfile(prefix.with_suffix(".model"), folder / SENTENCEPIECE_MODEL_FILE)
        shutil.copyfile(prefix.with_suffix(".vocab"), folder / SENTENCEPIECE_VOCAB_FILE)
        total = check_special_ids(folder)
        if total != vocab_size + NUM_SPECIAL_TOKENS:
            raise RuntimeError(f"trained {total} pieces, expected {vocab_size + NUM_SPECIAL_TOKENS}")
        build_fast_tokenizer(folder / SENTENCEPIECE_MODEL_FILE, model_max_length).save_pretrained(folder)
    print(
        f"vocabulary of {total} pieces ({model_type}{', byte fallback' if byte_fallback else ''}) "
        f"from {len(files)} file(s), "
        f"{min(seen, sample_sentences)} of {seen} sentences sampled -> {output_dir}"
    )
    return output_dir


# ----------------------------------------------------------------------------------------------
# Command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.cli import add_example

    parser.add_argument(
        "corpus", nargs="+", help="The corpus text files to learn from (made by `reforbert corpus`)."
    )
    parser.add_argument("--output", "-o", required=True, help="The vocabulary folder to write.")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_PIECES,
        help="The number of pieces besides the 7 specials (default %(default)s).",
    )
    parser.add_argument(
        "--model-type",
        choices=("bpe", "unigram"),
        default="bpe",
        help="The SentencePiece algorithm (default %(default)s).",
    )
    parser.add_argument(
        "--sample-sentences",
        type=int,
        default=DEFAULT_SAMPLE_SENTENCES,
        help="Train on a seeded uniform sample of this many sentences (default %(default)s).",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="The seed of the sentence sample (default %(default)s)."
    )
    parser.add_argument(
        "--character-coverage",
        type=float,
        default=DEFAULT_CHARACTER_COVERAGE,
        help="The share of the sample's characters the vocabulary must cover; the rarest rest become "
        "[UNK] (or bytes, with --byte-fallback). Default %(default)s.",
    )
    parser.add_argument(
        "--byte-fallback",
        action="store_true",
        help=f"Spell characters outside the vocabulary as UTF-8 bytes instead of [UNK] ({BYTE_PIECES} of "
        "the pieces become the bytes). For text less formal than the corpus, such as reviews or chat.",
    )
    parser.add_argument(
        "--model-max-length",
        type=int,
        default=None,
        help="The longest input, in tokens, that the saved Hugging Face tokenizer declares (default: "
        f"{default_model_max_length():,}, what the default model's positions take).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    add_example(parser, "reforbert vocab corpus/kowiki.txt -o vocab")


def run(args: argparse.Namespace) -> int:
    train_vocab(
        args.corpus,
        args.output,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        sample_sentences=args.sample_sentences,
        seed=args.seed,
        character_coverage=args.character_coverage,
        byte_fallback=args.byte_fallback,
        model_max_length=args.model_max_length,
        overwrite=args.overwrite,
    )
    return 0
