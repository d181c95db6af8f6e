"""BERT's masked-language-model corruption: pick ~15% of the tokens, hide them, remember the originals.

Of the picked positions 80% become ``[MASK]``, 10% a random token and 10% stay unchanged, so that
the model cannot learn that only ``[MASK]`` positions matter (Devlin et al. 2019, section 3.1).
The same function serves dynamic masking in the collator and static masking in the JSON-lines
writer, so both corrupt text identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from reforbert.configuration_reforbert import IGNORE_INDEX, MASK_ID, NUM_SPECIAL_TOKENS
from reforbert.data.vocab import SENTENCEPIECE_VOCAB_FILE

WORD_START = "\u2581"  # SentencePiece marks a piece that begins a word with "▁"


class _OneStream:
    """Random numbers for the whole tensor at once from one generator (the JSON-lines writer's case):
    every position draws, padding and rows that need no draw included, so ``fill`` and ``rows`` do not
    apply."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, shape: torch.Size, fill: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def integers(self, low: int, high: int, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=self.generator, dtype=dtype)


class _RowStreams:
    """Random numbers for a (rows, length) batch in which each row draws from a generator of its own.

    Row r draws exactly what :func:`mask_tokens` would draw for that row alone, unpadded (its first
    ``lengths[r]`` positions), from ``generators[r]``: masking a padded batch at once gives every example
    the mask it gets by itself. Padding positions get ``fill``.
    """

    def __init__(self, generators: Sequence[torch.Generator], lengths: Sequence[int]) -> None:
        self.generators, self.lengths = generators, lengths

    def uniform(self, shape: torch.Size, fill: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Uniform [0, 1) numbers; with ``rows`` (bool per row) only those rows draw."""
        out = torch.full(shape, fill)
        for row, (generator, length) in enumerate(zip(self.generators, self.lengths, strict=True)):
            if rows is None or rows[row]:
                out[row, :length] = torch.rand(length, generator=generator)
        return out

    def integers(self, low: int, high: int, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        out = torch.full(shape, low, dtype=dtype)
        for row, (generator, length) in enumerate(zip(self.generators, self.lengths, strict=True)):
            out[row, :length] = torch.randint(low, high, (length,), generator=generator, dtype=dtype)
        return out


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | Sequence[torch.Generator],
    mlm_probability: float = 0.15,
    word_start_mask: torch.Tensor | None = None,
    lengths: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked_input_ids, labels)``; ``labels`` is ``IGNORE_INDEX`` wherever nothing was masked.

    ``input_ids`` is 1-D or 2-D; ``special_tokens_mask`` is True where a token may never be
    masked ([CLS], [SEP], padding). With ``word_start_mask`` (True where a piece begins a word)
    whole words are masked: the decision is drawn once per word and copied to its pieces.
    Every row that has a maskable token gets at least one masked position, so that no example
    contributes an empty MLM loss.

    ``generator`` is one generator for the whole tensor, or one per row of a 2-D ``input_ids`` whose
    rows are examples padded at the end to a common length, with ``lengths`` their unpadded lengths:
    then each row is masked exactly as it would be alone with its generator (see :class:`_RowStreams`),
    at a fraction of the cost of masking the rows one by one.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    squeeze = input_ids.dim() == 1
    ids = input_ids.unsqueeze(0) if squeeze else input_ids
    special = (special_tokens_mask.unsqueeze(0) if squeeze else special_tokens_mask).bool()
    maskable = ~special
    streams: _OneStream | _RowStreams
    if isinstance(generator, torch.Generator):
        streams = _OneStream(generator)
    else:
        if squeeze or lengths is None or len(generator) != ids.shape[0] or len(lengths) != ids.shape[0]:
            raise ValueError("one generator per row needs 2-D input_ids and the rows' lengths")
        streams = _RowStreams(generator, lengths)

    # Each draw happens in the order a single row's masking makes it; unselected padding draws 1.0.
    draw = streams.uniform(ids.shape, 1.0)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    start_of_word = positions  # without word boundaries every token is its own word
    if word_start_mask is not None:
        starts = (word_start_mask.unsqueeze(0) if squeeze else word_start_mask).bool() | special
        # Each position takes the draw of the word start at or before it, so all pieces of a
        # word share one decision.
        start_of_word = torch.cummax(
            torch.where(starts, positions, torch.zeros_like(positions)), dim=1
        ).values
        draw = torch.gather(draw, 1, start_of_word)
    selected = (draw < mlm_probability) & maskable

    # Guarantee one prediction (one whole word) per row: a short sequence can otherwise draw nothing.
    empty_rows = (selected.sum(dim=1) == 0) & (maskable.sum(dim=1) > 0)
    if empty_rows.any():
        scores = streams.uniform(ids.shape, 0.0, rows=empty_rows).masked_fill(~maskable, -1.0)
        forced = scores.argmax(dim=1, keepdim=True)
        forced_word = torch.gather(start_of_word, 1, forced)
        selected |= (start_of_word == forced_word) & maskable & empty_rows.unsqueeze(1)

    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    action = streams.uniform(ids.shape, 1.0)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    # Random replacements come only from ordinary pieces: the specials sit at ids 0..6.
    random_ids = streams.integers(NUM_SPECIAL_TOKENS, vocab_size, ids.shape, ids.dtype)
    masked = ids.clone()
    masked[to_mask] = MASK_ID
    masked[to_random] = random_ids[to_random]
    if squeeze:
        return masked.squeeze(0), labels.squeeze(0)
    return masked, labels


def word_start_table(pieces: list[str]) -> torch.Tensor:
    """Bool tensor over the vocabulary: True for pieces that begin a word (and for the specials)."""
    table = torch.tensor([piece.startswith(WORD_START) for piece in pieces], dtype=torch.bool)
    table[:NUM_SPECIAL_TOKENS] = True
    return table


def load_word_start_table(vocab_dir: str | Path) -> torch.Tensor:
    """Read ``sentencepiece.vocab`` (piece TAB score per line) into a :func:`word_start_table`."""
    path = Path(vocab_dir) / SENTENCEPIECE_VOCAB_FILE
    with open(path, encoding="utf-8") as handle:
        pieces = [line.rstrip("\n").split("\t", 1)[0] for line in handle]
    return word_start_table(pieces)
