"""``reforbert pretraining-data``: turn the text corpus into BERT's MLM + NSP instances.

Each instance is ``[CLS] A [SEP] B [SEP]``: A is a run of consecutive sentences of a document and
B either the sentences that really follow (next-sentence label "is next") or sentences from
another document. Instances are written as binary shards (unmasked; the collator masks them
dynamically) or, with ``jsonl=True``, as the seed's JSON lines, masked once here.

How the work is split so that the output is byte-identical for any number of workers: the
corpus is cut into *blocks* of whole documents (about ``block_bytes`` of text each, in corpus
order). A block is processed with a random generator seeded by (seed, block number, duplicate)
alone, and blocks are written in order, so which process handled a block never shows.

Memory stays bounded: the main process reads documents as a stream and keeps only the blocks in
flight (twice the worker count); a worker holds one block.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from reforbert.configuration_reforbert import CLS_ID, IGNORE_INDEX, NUM_SPECIAL_TOKENS, SEP_ID
from reforbert.data import shards
from reforbert.data.corpus import check_corpus_files, iter_documents, split_sentences
from reforbert.data.vocab import (
    SENTENCEPIECE_MODEL_FILE,
    SENTENCEPIECE_VOCAB_FILE,
    load_sentencepiece,
    vocabulary_fingerprint,
)
from reforbert.errors import ReforBertInputError
from reforbert.fileio import atomic_directory, refuse_to_overwrite, sha256_of

DEFAULT_BLOCK_BYTES = 1 << 20
JSONL_NAME = "instances_{}.json"


@dataclass(frozen=True)
class InstanceSettings:
    max_seq_len: int = 512
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    seed: int = 0
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    jsonl: bool = False


# ----------------------------------------------------------------------------------------------
# Building instances from one document


def _truncate_pair(
    a: list[int], b: list[int], max_tokens: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Shorten the longer segment until both fit, cutting each token from a random end.

    Cutting from either end (not just the tail) keeps the model from seeing only sentence
    beginnings, and acts as a little noise. Tokens are cut in runs for speed; each cut token
    still picks its end by a fair coin.
    """
    while len(a) + len(b) > max_tokens:
        longer, shorter = (a, b) if len(a) > len(b) else (b, a)
        run = max(1, min(len(a) + len(b) - max_tokens, len(longer) - len(shorter)))
        front = sum(rng.random() < 0.5 for _ in range(run))
        trimmed = longer[front : len(longer) - (run - front)]
        if longer is a:
            a = trimmed
        else:
            b = trimmed
    return a, b


def _random_segment(pool: list[list[list[int]]], exclude: int, length: int, rng: random.Random) -> list[int]:
    """Consecutive sentences (at least ``length`` tokens if the document has them) from another document."""
    others = len(pool) - 1
    pick = rng.randrange(others)
    document = pool[pick if pick < exclude else pick + 1]
    start = rng.randrange(len(document))
    tokens: list[int] = []
    for sentence in document[start:]:
        tokens.extend(sentence)
        if len(tokens) >= length:
            break
    return tokens


def instances_from_document(
    pool: list[list[list[int]]], index: int, settings: InstanceSettings, rng: random.Random
) -> list[tuple[list[int], list[int], bool]]:
    """Cut document ``pool[index]`` (a list of tokenised sentences) into (A, B, is_next) triples.

    ``pool`` is the block's documents: the random B of a negative pair comes from one of them
    (never from the same document). Google's BERT draws from the whole corpus; a block of about
    a megabyte holds hundreds of unrelated articles, which serves the same purpose without the
    whole corpus in memory, and keeps the result independent of the worker count.
    """
    document = pool[index]
    max_tokens = settings.max_seq_len - 3  # room for [CLS], [SEP], [SEP]
    # Mostly fill the sequence; sometimes aim shorter so the model also sees the short inputs
    # that fine-tuning tasks have (BERT's short_seq_prob).
    target = max_tokens
    if rng.random() < settings.short_seq_prob:
        target = rng.randint(2, max_tokens)

    result: list[tuple[list[int], list[int], bool]] = []
    chunk: list[list[int]] = []
    chunk_tokens = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_tokens += len(document[i])
        if i == len(document) - 1 or chunk_tokens >= target:
            # Decide the label first, so that positives are 50% whatever the document shapes.
            is_next = len(pool) < 2 or rng.random() < 0.5
            if len(chunk) >= 2:
                a_end = rng.randint(1, len(chunk) - 1)
                a = [token for sentence in chunk[:a_end] for token in sentence]
                b = [token for sentence in chunk[a_end:] for token in sentence]
            elif is_next and len(chunk[0]) >= 2:
                # One long sentence: its true continuation is its own second half.
                cut = rng.randint(1, len(chunk[0]) - 1)
                a, b, a_end = chunk[0][:cut], chunk[0][cut:], 1
            else:
                a, b, a_end = list(chunk[0]), [], 1
            if not is_next:
                b = _random_segment(pool, index, max(1, target - len(a)), rng)
                # The sentences after A were not used: put them back for the next instance.
                i -= len(chunk) - a_end
            a, b = _truncate_pair(a, b, max_tokens, rng)
            if a and b:
                result.append((a, b, is_next))
            chunk, chunk_tokens = [], 0
        i += 1
    return result


# ----------------------------------------------------------------------------------------------
# Worker side: one block of documents in, instances out


_processor = None  # the SentencePiece processor, loaded once per worker process
_word_starts = None


def _init_worker(model_file: str) -> None:
    global _processor, _word_starts
    import sentencepiece as spm

    _processor = spm.SentencePieceProcessor(model_file=model_file)
    _word_starts = None


def _block_seed(seed: int, block: int, dupe: int) -> int:
    return int(np.random.SeedSequence([seed, block, dupe]).generate_state(1, dtype=np.uint64)[0])


def _tokenize_block(documents: list[list[str]]) -> list[list[list[int]]]:
    sentences_per_document = []
    flat: list[str] = []
    for document in documents:
        sentences = [s for paragraph in document for s in split_sentences(paragraph)]
        sentences_per_document.append(len(sentences))
        flat.extend(sentences)
    encoded = _processor.encode(flat)
    pool, start = [], 0
    for count in sentences_per_document:
        document = [ids for ids in encoded[start : start + count] if ids]
        start += count
        if document:
            pool.append(document)
    return pool


def _mask_statically(instances, settings: InstanceSettings, block: int) -> list[str]:
    """Mask each instance once (80/10/10, like the seed) and render it as a JSON line."""
    global _word_starts
    import torch

    from reforbert.data.masking import mask_tokens, word_start_table

    torch.set_num_threads(1)
    pieces = [_processor.id_to_piece(i) for i in range(_processor.get_piece_size())]
    if settings.whole_word_mask and _word_starts is None:
        _word_starts = word_start_table(pieces)
    # Duplicate number dupe_factor is never used for splitting: a stream of its own for the masks.
    generator = torch.Generator().manual_seed(_block_seed(settings.seed, block, settings.dupe_factor))
    lines = []
    for ids, boundary, is_next in instances:
        tensor = torch.tensor(ids, dtype=torch.long)
        masked, labels = mask_tokens(
            tensor,
            tensor < NUM_SPECIAL_TOKENS,
            len(pieces),
            generator,
            settings.mlm_probability,
            _word_starts[tensor] if settings.whole_word_mask else None,
        )
        positions = (labels != IGNORE_INDEX).nonzero(as_tuple=True)[0].tolist()
        record = {
            "tokens": [pieces[i] for i in masked.tolist()],
            "segment": [0] * boundary + [1] * (len(ids) - boundary),
            "is_next": int(is_next),
            "mask_idx": positions,
            "mask_label": [pieces[ids[p]] for p in positions],
        }
        lines.append(json.dumps(record))
    return lines


def build_block(block: int, documents: list[list[str]], settings: InstanceSettings) -> dict[str, Any]:
    """All instances of one block, shuffled, as arrays (shards) or JSON lines (``settings.jsonl``)."""
    pool = _tokenize_block(documents)
    instances: list[tuple[list[int], int, bool]] = []
    rng = random.Random(_block_seed(settings.seed, block, 0))
    for dupe in range(settings.dupe_factor):
        rng.seed(_block_seed(settings.seed, block, dupe))
        for index in range(len(pool)):
            for a, b, is_next in instances_from_document(pool, index, settings, rng):
                instances.append(([CLS_ID, *a, SEP_ID, *b, SEP_ID], len(a) + 2, is_next))
    rng.shuffle(instances)
    stats = {
        "documents": len(pool),
        "sentences": sum(len(document) for document in pool),
        "corpus_tokens": sum(len(sentence) for document in pool for sentence in document),
        "instances": len(instances),
        "instance_tokens": sum(len(ids) for ids, _, _ in instances),
        "is_next": sum(is_next for _, _, is_next in instances),
    }
    if settings.jsonl:
        return {"stats": stats, "lines": _mask_statically(instances, settings, block)}
    lengths = np.fromiter((len(ids) for ids, _, _ in instances), dtype=np.int64, count=len(instances))
    flat = itertools.chain.from_iterable(ids for ids, _, _ in instances)
    tokens = np.fromiter(flat, dtype=np.uint16, count=int(lengths.sum()))
    return {
        "stats": stats,
        "tokens": tokens,
        "lengths": lengths,
        "boundaries": np.array([boundary for _, boundary, _ in instances], dtype=np.uint16),
        "is_next": np.array([is_next for _, _, is_next in instances], dtype=np.uint8),
    }


def _build_block_task(task: tuple[int, list[list[str]], InstanceSettings]) -> dict[str, Any]:
    return build_block(*task)


# ----------------------------------------------------------------------------------------------
# Main process: stream blocks, run them in order, write


def iter_blocks(files: list[Path], block_bytes: int) -> Iterator[tuple[list[list[str]], int]]:
    """Yield (documents, bytes of text) of about ``block_bytes`` each, in corpus order."""
    documents: list[list[str]] = []
    size = 0
    for file in files:
        for document in iter_documents(file):
            if not document:
                continue
            documents.append(document)
            size += sum(len(paragraph.encode("utf-8")) + 1 for paragraph in document)
            if size >= block_bytes:
                yield documents, size
                documents, size = [], 0
    if documents:
        yield documents, size


def _ordered_results(tasks: Iterable[tuple], workers: int, model_file: str) -> Iterator[tuple[int, dict]]:
    """Run block tasks on ``workers`` processes, at most 2 x workers in flight, yielding in order."""
    if workers <= 1:
        _init_worker(model_file)
        for task, size in tasks:
            yield size, _build_block_task(task)
        return
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(model_file,)) as pool:
        pending: collections.deque = collections.deque()
        for task, size in tasks:
            pending.append((size, pool.apply_async(_build_block_task, (task,))))
            if len(pending) >= 2 * workers:
                size_done, result = pending.popleft()
                yield size_done, result.get()
        while pending:
            size_done, result = pending.popleft()
            yield size_done, result.get()


def _check_request(
    model_file: Path, output_dir: Path, settings: InstanceSettings, count: int, overwrite: bool
) -> int:
    """Refuse impossible settings before any work starts; return the vocabulary's size."""
    if not model_file.is_file():
        raise ReforBertInputError("vocabulary model is missing (run `reforbert vocab`)", model_file)
    if not 8 <= settings.max_seq_len <= 65535:
        raise ReforBertInputError(f"max_seq_len must be between 8 and 65535, got {settings.max_seq_len}")
    if not 0.0 <= settings.short_seq_prob <= 1.0 or settings.dupe_factor < 1 or count < 1:
        raise ReforBertInputError("short_seq_prob must be in [0, 1]; dupe_factor and count at least 1")
    if settings.whole_word_mask and not settings.jsonl:
        # Shards are unmasked (the collator masks them while training): a flag here would do nothing.
        raise ReforBertInputError(
            "--whole-word-mask applies only to --jsonl output; binary shards are masked while training"
        )
    refuse_to_overwrite(output_dir, overwrite)
    vocab_size = load_sentencepiece(model_file).get_piece_size()
    if vocab_size > 1 << 16:
        raise ReforBertInputError(f"{vocab_size} pieces do not fit the uint16 shards", model_file)
    return vocab_size


def _write_blocks(
    results: Iterable[tuple[int, dict[str, Any]]],
    folder: Path,
    writer: shards.ShardWriter | None,
    jsonl_files: int,
    total_bytes: int,
    progress: bool,
) -> collections.Counter:
    """Write each block's instances as it arrives: to ``writer``'s shards, or (``jsonl_files`` > 0)
    as JSON lines dealt over that many files. Returns the blocks' statistics summed."""
    totals: collections.Counter = collections.Counter()
    with contextlib.ExitStack() as stack:
        outputs = [
            stack.enter_context(open(folder / JSONL_NAME.format(i), "w", encoding="utf-8"))
            for i in range(jsonl_files)
        ]
        bar = stack.enter_context(
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pretraining data", disable=not progress)
        )
        for size, result in results:
            if outputs:
                # Instance k goes to file k mod count: balanced files without knowing the total.
                for line in result["lines"]:
                    outputs[totals["instances"] % jsonl_files].write(line + "\n")
                    totals["instances"] += 1
                totals.update({k: v for k, v in result["stats"].items() if k != "instances"})
            else:
                writer.add(result["tokens"], result["lengths"], result["boundaries"], result["is_next"])
                totals.update(result["stats"])
            bar.update(size)
        bar.update(total_bytes - bar.n)  # blocks count text, not markup and blank lines
    return totals


def _checked_statistics(totals: collections.Counter, files: list[Path]) -> dict[str, int]:
    culprit = files[0] if len(files) == 1 else None
    if totals["corpus_tokens"] == 0:
        raise ReforBertInputError("the corpus has no text", culprit)
    if totals["instances"] == 0:
        raise ReforBertInputError(
            f"the corpus yields no instances: all {totals['documents']} documents "
            f"({totals['sentences']} sentences, {totals['corpus_tokens']} tokens) are too short "
            "to cut into a sentence pair",
            culprit,
        )
    return {
        key: int(totals[key])
        for key in ("documents", "sentences", "corpus_tokens", "instances", "instance_tokens", "is_next")
    }


def make_pretraining_data(
    corpus_files: Iterable[str | Path],
    vocab_dir: str | Path,
    output_dir: str | Path,
    *,
    max_seq_len: int = 512,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int = 0,
    mlm_probability: float = 0.15,
    whole_word_mask: bool = False,
    jsonl: bool = False,
    count: int = 10,
    workers: int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    shard_tokens: int = 1 << 25,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write pretraining instances for ``corpus_files`` to ``output_dir``; return its metadata.

    The output is the same bytes for the same corpus, vocabulary, settings and ``seed``, whatever
    ``workers`` is. ``count`` is the number of JSON-lines files (with ``jsonl``).
    """
    files = check_corpus_files(corpus_files)
    vocab_dir, output_dir = Path(vocab_dir), Path(output_dir)
    model_file = vocab_dir / SENTENCEPIECE_MODEL_FILE
    settings = InstanceSettings(
        max_seq_len, short_seq_prob, dupe_factor, seed, mlm_probability, whole_word_mask, jsonl
    )
    vocab_size = _check_request(model_file, output_dir, settings, count, overwrite)
    workers = workers or os.cpu_count() or 1
    total_bytes = sum(file.stat().st_size for file in files)

    with atomic_directory(output_dir) as folder:
        tasks = (
            ((block, documents, settings), size)
            for block, (documents, size) in enumerate(iter_blocks(files, block_bytes))
        )
        results = _ordered_results(tasks, workers, str(model_file))
        writer = shards.ShardWriter(folder, shard_tokens) if not jsonl else None
        totals = _write_blocks(results, folder, writer, count if jsonl else 0, total_bytes, progress)
        statistics = _checked_statistics(totals, files)
        metadata = {
            "vocab_sha256": sha256_of(model_file),
            "vocab_fingerprint": vocabulary_fingerprint(model_file),
            "vocab_size": vocab_size,
            "seed": seed,
            **{k: v for k, v in asdict(settings).items() if k != "seed"},
            "block_bytes": block_bytes,
            "corpus_files": [file.name for file in files],
            "statistics": statistics,
        }
        if jsonl:
            shutil.copyfile(vocab_dir / SENTENCEPIECE_VOCAB_FILE, folder / SENTENCEPIECE_VOCAB_FILE)
            metadata = {
                "format": shards.JSONL_FORMAT,
                "version": shards.FORMAT_VERSION,
                **metadata,
                "num_instances": statistics["instances"],
                "files": [JSONL_NAME.format(i) for i in range(count)],
            }
            shards.write_metadata(folder, metadata)
        else:
            metadata = writer.close(metadata)
    stats = metadata["statistics"]
    print(
        f"{stats['documents']} documents, {stats['corpus_tokens']} tokens -> {stats['instances']} instances "
        f"({stats['is_next'] / stats['instances']:.1%} is-next) in {output_dir}"
    )
    return metadata


# ----------------------------------------------------------------------------------------------
# Command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reforbert.cli import add_example

    add = parser.add_argument
    add("corpus", nargs="+", help="The corpus text files to cut into instances (made by `reforbert corpus`).")
    add("--vocab", required=True, help="The vocabulary folder made by `reforbert vocab`.")
    add("--output", "-o", required=True, help="The folder to write the instances into.")
    add(
        "--max-seq-len",
        type=int,
        default=512,
        help="The length of an instance in tokens, [CLS] and [SEP]s included (default %(default)s).",
    )
    add(
        "--short-seq-prob",
        type=float,
        default=0.1,
        help="The share of instances cut to a random shorter length, as BERT does (default %(default)s).",
    )
    add(
        "--dupe-factor",
        type=int,
        default=1,
        help="The number of passes over the corpus, each with new splits (default %(default)s).",
    )
    add("--seed", type=int, default=0, help="The seed of every random choice (default %(default)s).")
    add(
        "--mlm-probability",
        type=float,
        default=0.15,
        help="The share of tokens masked in the JSON lines of --jsonl (default %(default)s).",
    )
    add(
        "--whole-word-mask",
        action="store_true",
        help="Mask all pieces of a word together in the JSON lines of --jsonl (binary shards are "
        "masked while training, so it is an error without --jsonl).",
    )
    add("--jsonl", action="store_true", help="Write the seed's masked JSON lines instead of binary shards.")
    add("--count", type=int, default=10, help="The number of JSON-lines files (default %(default)s).")
    add("--workers", type=int, default=None, help="The number of processes (default: all cores).")
    add("--overwrite", action="store_true", help="Replace an existing output folder.")
    add_example(parser, "reforbert pretraining-data corpus/kowiki.txt --vocab vocab -o data")


def run(args: argparse.Namespace) -> int:
    make_pretraining_data(
        args.corpus,
        args.vocab,
        args.output,
        max_seq_len=args.max_seq_len,
        short_seq_prob=args.short_seq_prob,
        dupe_factor=args.dupe_factor,
        seed=args.seed,
        mlm_probability=args.mlm_probability,
        whole_word_mask=args.whole_word_mask,
        jsonl=args.jsonl,
        count=args.count,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    return 0
