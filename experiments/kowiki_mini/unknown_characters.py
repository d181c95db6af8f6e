"""How much of a benchmark's text a tokenizer can only read as [UNK], and which characters cause it.

A vocabulary learned from Wikipedia leaves out characters that are rare there but common in informal
text (review slang, emoticons); each becomes [UNK] and its meaning is lost before the model sees it.

    python experiments/kowiki_mini/unknown_characters.py models/reforbert-mini-kowiki \\
        ../shared/data/tasks/nsmc/ratings_train.proxy.txt --column 1 --sample 5000
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

from transformers import AutoTokenizer

import reforbert  # noqa: F401  registers the ReforBERT tokenizer classes
from reforbert.errors import ReforBertInputError


def read_texts(path: Path, column: int, header: bool) -> list[str]:
    """The given tab-separated column of every row."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ReforBertInputError(f"cannot read: {error}", path) from error
    texts = []
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        fields = line.split("\t")
        if column >= len(fields):
            raise ReforBertInputError(f"no column {column} (tab-separated)", path, line=number)
        texts.append(fields[column])
    return texts


def unknown_statistics(tokenizer, texts: list[str], top: int) -> dict:
    """The share of tokens and of texts that are (or hold) [UNK], and the characters behind them."""
    unk = tokenizer.unk_token_id
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    tokens = sum(map(len, encoded))
    unknown = sum(ids.count(unk) for ids in encoded)
    # A character is unknown when, alone, it tokenizes to [UNK]; counted by occurrences in the texts.
    characters = Counter(character for text in texts for character in text if not character.isspace())
    alone = tokenizer(list(characters), add_special_tokens=False)["input_ids"]
    unknown_characters = Counter(
        {
            character: characters[character]
            for character, ids in zip(characters, alone, strict=True)
            if unk in ids
        }
    )
    return {
        "texts": len(texts),
        "tokens": tokens,
        "unknown_tokens": unknown,
        "texts_with_unknown": sum(unk in ids for ids in encoded),
        "top_unknown_characters": unknown_characters.most_common(top),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer", type=Path, help="A tokenizer folder (e.g. a released model's).")
    parser.add_argument("file", type=Path, help="A tab-separated benchmark file.")
    parser.add_argument("--column", type=int, default=0, help="The text column, from 0 (default 0).")
    parser.add_argument("--no-header", action="store_true", help="The first row is data, not a header.")
    parser.add_argument("--sample", type=int, default=0, help="Score a seeded sample of this many rows.")
    parser.add_argument("--seed", type=int, default=0, help="The sample's seed (default 0).")
    parser.add_argument("--top", type=int, default=15, help="How many characters to list (default 15).")
    args = parser.parse_args(argv)

    try:
        texts = read_texts(args.file, args.column, header=not args.no_header)
    except ReforBertInputError as error:
        print(f"unknown_characters: {error}", file=sys.stderr)
        return 1
    if args.sample and args.sample < len(texts):
        texts = random.Random(args.seed).sample(texts, args.sample)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    stats = unknown_statistics(tokenizer, texts, args.top)
    print(
        f"{stats['unknown_tokens']:,} of {stats['tokens']:,} tokens are [UNK] "
        f"({100 * stats['unknown_tokens'] / max(1, stats['tokens']):.2f}%); "
        f"{stats['texts_with_unknown']:,} of {stats['texts']:,} texts hold one "
        f"({100 * stats['texts_with_unknown'] / max(1, stats['texts']):.1f}%)"
    )
    listed = ", ".join(f"{character} {count}" for character, count in stats["top_unknown_characters"])
    print(f"most frequent unknown characters (occurrences): {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
