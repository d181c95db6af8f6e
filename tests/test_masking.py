"""BERT masking (80/10/10, never specials) and the collator's resumable, per-example masking."""

from __future__ import annotations

import pytest
import torch

from reforbert.configuration_reforbert import (
    CLS_ID,
    IGNORE_INDEX,
    MASK_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    SEP_ID,
)
from reforbert.data.collator import PretrainingCollator
from reforbert.data.masking import mask_tokens, word_start_table

VOCAB = 8007


def random_batch(rows: int = 200, length: int = 512, vocab: int = VOCAB, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(
        NUM_SPECIAL_TOKENS, vocab, (rows, length), generator=torch.Generator().manual_seed(seed)
    )
    ids[:, 0] = CLS_ID
    ids[:, length // 2] = SEP_ID
    ids[:, -1] = SEP_ID
    return ids


@pytest.mark.parametrize("probability", [0.15, 0.3])
def test_mask_ratio_and_80_10_10_split(probability: float) -> None:
    ids = random_batch()  # 102,400 tokens
    special = ids < NUM_SPECIAL_TOKENS
    masked, labels = mask_tokens(ids, special, VOCAB, torch.Generator().manual_seed(0), probability)
    selected = labels != IGNORE_INDEX
    assert abs(selected[~special].float().mean().item() - probability) < 0.01
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    n = selected.sum().item()
    as_mask = (masked[selected] == MASK_ID).sum().item() / n
    unchanged = (masked[selected] == ids[selected]).sum().item() / n
    replaced = 1.0 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.01
    assert abs(unchanged - 0.1) < 0.01
    assert abs(replaced - 0.1) < 0.01


def test_specials_are_never_masked_nor_drawn_as_replacements() -> None:
    # A vocabulary of 10 makes random replacements collide with the special range if allowed.
    ids = random_batch(rows=100, length=128, vocab=10)
    ids[:, 60:70] = PAD_ID
    special = ids < NUM_SPECIAL_TOKENS
    masked, labels = mask_tokens(ids, special, 10, torch.Generator().manual_seed(3), 0.5)
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])
    replaced = (labels != IGNORE_INDEX) & (masked != MASK_ID)
    assert replaced.sum() > 100
    assert (masked[replaced] >= NUM_SPECIAL_TOKENS).all()


def test_every_row_gets_a_prediction() -> None:
    ids = random_batch(rows=500, length=4)  # 2 maskable tokens per row: many rows would draw none
    _, labels = mask_tokens(ids, ids < NUM_SPECIAL_TOKENS, VOCAB, torch.Generator().manual_seed(0), 0.15)
    assert ((labels != IGNORE_INDEX).sum(dim=1) >= 1).all()


def test_one_dimensional_input() -> None:
    ids = random_batch(rows=1)[0]
    masked, labels = mask_tokens(ids, ids < NUM_SPECIAL_TOKENS, VOCAB, torch.Generator().manual_seed(0))
    assert masked.shape == labels.shape == ids.shape


def test_whole_word_masking_masks_all_pieces_of_a_word() -> None:
    ids = random_batch(rows=100, length=256)
    starts = torch.rand(ids.shape, generator=torch.Generator().manual_seed(5)) < 0.4
    special = ids < NUM_SPECIAL_TOKENS
    _, labels = mask_tokens(ids, special, VOCAB, torch.Generator().manual_seed(0), 0.15, starts)
    selected = labels != IGNORE_INDEX
    word_starts = starts | special
    for row in range(ids.shape[0]):
        for position in range(1, ids.shape[1]):
            if not word_starts[row, position] and not special[row, position]:
                assert selected[row, position] == selected[row, position - 1] or special[row, position - 1]
    words_selected = selected & word_starts
    assert abs(words_selected.sum().item() / (word_starts & ~special).sum().item() - 0.15) < 0.02


def test_word_start_table() -> None:
    table = word_start_table(
        ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]", "[MASK]", "\u2581가", "나"]
    )
    assert table.tolist() == [True] * 7 + [True, False]


def items(lengths: list[int], start_index: int = 0) -> list[dict]:
    result = []
    for offset, length in enumerate(lengths):
        ids = random_batch(rows=1, length=length, seed=100 + start_index + offset)[0]
        types = torch.zeros(length, dtype=torch.long)
        types[length // 2 + 1 :] = 1
        result.append(
            {
                "input_ids": ids,
                "token_type_ids": types,
                "next_sentence_label": offset % 2,
                "index": start_index + offset,
            }
        )
    return result


def test_collator_pads_and_lays_out_the_batch() -> None:
    batch = PretrainingCollator(VOCAB, pad_to_multiple_of=8)(items([20, 33]))
    assert batch["input_ids"].shape == (2, 40)
    assert batch["attention_mask"][0].tolist() == [1] * 20 + [0] * 20
    assert (batch["input_ids"][0, 20:] == PAD_ID).all()
    assert (batch["labels"][0, 20:] == IGNORE_INDEX).all()
    assert batch["token_type_ids"][1, :33].tolist() == [0] * 17 + [1] * 16
    assert batch["next_sentence_label"].tolist() == [0, 1]
    assert ((batch["labels"] != IGNORE_INDEX).sum(dim=1) >= 1).all()


def test_collator_masks_identically_after_resume_whatever_the_batch() -> None:
    examples = items([50, 64, 40, 128, 90], start_index=1000)
    full = PretrainingCollator(VOCAB, seed=7)
    full.set_epoch(3)
    together = full(examples)
    resumed = PretrainingCollator(VOCAB, seed=7)  # a fresh collator, as after a restart
    resumed.set_epoch(3)
    for row, example in enumerate(examples):
        alone = resumed([examples[(row + 1) % 5], example])  # different batch mates and position
        n = len(example["input_ids"])
        assert torch.equal(alone["labels"][1, :n], together["labels"][row, :n])
        assert torch.equal(alone["input_ids"][1, :n], together["input_ids"][row, :n])
    resumed.set_epoch(4)
    assert not torch.equal(resumed(examples)["labels"], together["labels"])
    other_seed = PretrainingCollator(VOCAB, seed=8)
    other_seed.set_epoch(3)
    assert not torch.equal(other_seed(examples)["labels"], together["labels"])


def test_collator_keeps_labels_of_premasked_items() -> None:
    example = items([30])[0]
    labels = torch.full((30,), IGNORE_INDEX)
    labels[5] = 1234
    example["labels"] = labels
    batch = PretrainingCollator(VOCAB)([example])
    assert torch.equal(batch["labels"][0], labels)
    assert torch.equal(batch["input_ids"][0], example["input_ids"])


def test_collator_whole_word_mask_reads_the_vocabulary(tmp_path) -> None:
    pieces = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]", "[MASK]"] + [
        ("\u2581" if i % 3 == 0 else "") + f"p{i}" for i in range(93)
    ]
    (tmp_path / "sentencepiece.vocab").write_text("".join(f"{p}\t0\n" for p in pieces), encoding="utf-8")
    collator = PretrainingCollator(100, whole_word_mask=True, vocab_dir=tmp_path, mlm_probability=0.3)
    ids = random_batch(rows=1, length=300, vocab=100)[0]
    batch = collator(
        [{"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "next_sentence_label": 0, "index": 0}]
    )
    selected = (batch["labels"][0] != IGNORE_INDEX).tolist()
    starts = collator.word_starts[ids].tolist()
    for position in range(1, len(ids)):
        if (
            not starts[position]
            and ids[position] >= NUM_SPECIAL_TOKENS
            and ids[position - 1] >= NUM_SPECIAL_TOKENS
        ):
            assert selected[position] == selected[position - 1]


def test_forced_prediction_masks_a_whole_word() -> None:
    ids = torch.tensor([[CLS_ID, 10, 11, 12, 13, SEP_ID]]).repeat(300, 1)
    starts = torch.tensor([[True, True, False, False, True, True]]).repeat(300, 1)
    _, labels = mask_tokens(
        ids, ids < NUM_SPECIAL_TOKENS, VOCAB, torch.Generator().manual_seed(0), 0.01, starts
    )
    selected = labels != IGNORE_INDEX
    assert (selected.sum(dim=1) >= 1).all()
    first_word = selected[:, 1:4]
    assert (first_word.all(dim=1) | ~first_word.any(dim=1)).all()
    assert first_word.all(dim=1).any() and selected[:, 4].any()


@pytest.mark.parametrize("whole_word", [False, True])
def test_collator_masks_a_padded_batch_as_each_example_alone(tmp_path, whole_word: bool) -> None:
    pieces = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]", "[MASK]"] + [
        ("\u2581" if i % 3 == 0 else "") + f"p{i}" for i in range(VOCAB - NUM_SPECIAL_TOKENS)
    ]
    (tmp_path / "sentencepiece.vocab").write_text("".join(f"{p}\t0\n" for p in pieces), encoding="utf-8")
    # Rows of 3 to 6 tokens at 5% often draw nothing and take the forced pick, which draws more.
    lengths = [3, 4, 5, 6] * 6 + [40, 128, 77, 2]
    collator = PretrainingCollator(
        VOCAB, mlm_probability=0.05, seed=5, whole_word_mask=whole_word, vocab_dir=tmp_path
    )
    collator.set_epoch(1)
    examples = items(lengths, start_index=300)
    examples[-1]["labels"] = torch.tensor([IGNORE_INDEX, 42])  # pre-masked: kept, not masked again
    batch = collator(examples)
    for row, example in enumerate(examples[:-1]):
        masked, labels = collator.mask_example(example["input_ids"], example["index"])
        n = len(masked)
        assert torch.equal(batch["input_ids"][row, :n], masked), row
        assert torch.equal(batch["labels"][row, :n], labels), row
    assert batch["labels"][-1, :2].tolist() == [IGNORE_INDEX, 42]
