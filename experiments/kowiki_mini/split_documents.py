"""Hold out every N-th document of a `reforbert corpus` text file (documents are separated by a blank line).

The held-out documents are spread over the whole corpus and never seen in pretraining, so scores on them
measure what a model learned rather than what it memorised.

    python experiments/kowiki_mini/split_documents.py kowiki.txt --train train.txt --heldout heldout.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reforbert.fileio import atomic_file


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", type=Path, help="The text written by `reforbert corpus`.")
    parser.add_argument("--train", type=Path, required=True, help="Where the pretraining documents go.")
    parser.add_argument("--heldout", type=Path, required=True, help="Where the held-out documents go.")
    parser.add_argument("--every", type=int, default=100, help="Hold out documents 0, N, 2N, ...")
    args = parser.parse_args()
    documents = [d for d in args.corpus.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    heldout = documents[:: args.every]
    train = [d for i, d in enumerate(documents) if i % args.every]
    for path, part in ((args.train, train), (args.heldout, heldout)):
        with atomic_file(path, "w", encoding="utf-8") as handle:
            handle.write("\n\n".join(part) + "\n")
    print(f"{len(documents):,} documents: {len(train):,} -> {args.train}, {len(heldout):,} -> {args.heldout}")


if __name__ == "__main__":
    main()
