"""Batching pretraining instances with dynamic masking that a resumed run reproduces exactly.

Each example's mask is drawn from a generator seeded by (seed, epoch, example index) alone, so it
does not depend on which other examples share its batch, on the number of data-loader workers,
or on whether training was interrupted and resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from reforbert.configuration_reforbert import CLS_ID, IGNORE_INDEX, NUM_SPECIAL_TOKENS, PAD_ID
from reforbert.data.masking import load_word_start_table, mask_tokens


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch, index)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class PretrainingCollator:
    """Pad a list of dataset items and mask those not masked yet (MLM + NSP batch).

    Items come from :func:`reforbert.data.shards.open_pretraining_data`. Items that already carry
    ``labels`` (the statically masked JSON lines) are padded but not masked again. Call
    :meth:`set_epoch` at the start of each epoch so every epoch sees fresh masks.
    """

    def __init__(
        self,
        vocab_size: int,
        mlm_probability: float = 0.15,
        seed: int = 0,
        pad_to_multiple_of: int | None = None,
        whole_word_mask: bool = False,
        vocab_dir: str | Path | None = None,
    ) -> None:
        if vocab_size <= NUM_SPECIAL_TOKENS:
            raise ValueError(f"vocab_size {vocab_size} leaves no ordinary tokens")
        self.vocab_size = vocab_size
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.epoch = 0
        self.word_starts: torch.Tensor | None = None
        if whole_word_mask:
            if vocab_dir is None:
                raise ValueError("whole_word_mask needs vocab_dir to know which pieces begin words")
            self.word_starts = load_word_start_table(vocab_dir)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def mask_example(self, input_ids: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask one unpadded example the way this collator always masks it in this epoch."""
        special = input_ids < NUM_SPECIAL_TOKENS
        word_start = self.word_starts[input_ids] if self.word_starts is not None else None
        return mask_tokens(
            input_ids,
            special,
            self.vocab_size,
            example_generator(self.seed, self.epoch, index),
            self.mlm_probability,
            word_start,
        )

    def mask_rows(
        self, input_ids: torch.Tensor, indices: list[int], lengths: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a padded batch of examples, each exactly as :meth:`mask_example` masks it alone."""
        special = input_ids < NUM_SPECIAL_TOKENS  # padding included
        word_start = self.word_starts[input_ids] if self.word_starts is not None else None
        generators = [example_generator(self.seed, self.epoch, index) for index in indices]
        return mask_tokens(
            input_ids, special, self.vocab_size, generators, self.mlm_probability, word_start, lengths
        )

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("empty batch")
        length = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(items)
        # Filled as numpy arrays, one row at a time (a torch slice assignment costs several times
        # more per row), then handed to torch without a copy.
        input_ids = np.full((batch_size, length), PAD_ID, dtype=np.int64)
        token_type_ids = np.zeros((batch_size, length), dtype=np.int64)
        attention_mask = np.zeros((batch_size, length), dtype=np.int64)
        labels = np.full((batch_size, length), IGNORE_INDEX, dtype=np.int64)
        next_sentence_label = np.empty(batch_size, dtype=np.int64)
        to_mask: list[int] = []  # rows masked here, all at once below
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = item["input_ids"]
            if n == 0 or input_ids[row, 0] != CLS_ID:
                raise ValueError(f"example {item.get('index', row)} does not start with [CLS]")
            if "labels" in item:
                labels[row, :n] = item["labels"]
            elif "index" not in item:
                raise ValueError("items need an 'index' key to be masked reproducibly")
            else:
                to_mask.append(row)
            token_type_ids[row, :n] = item["token_type_ids"]
            attention_mask[row, :n] = 1
            next_sentence_label[row] = int(item["next_sentence_label"])
        input_ids, labels = torch.from_numpy(input_ids), torch.from_numpy(labels)
        if to_mask:
            rows = torch.tensor(to_mask)
            input_ids[rows], labels[rows] = self.mask_rows(
                input_ids[rows],
                [int(items[row]["index"]) for row in to_mask],
                [len(items[row]["input_ids"]) for row in to_mask],
            )
        return {
            "input_ids": input_ids,
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": labels,
            "next_sentence_label": torch.from_numpy(next_sentence_label),
        }
