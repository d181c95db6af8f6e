"""Shared fixtures: a tiny fast tokenizer that needs no trained vocabulary."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from reforbert.data.vocab import wrap_as_bert_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[CLS]", "[MASK]"]  # ids 0..6
# Every Hangul syllable, printable ASCII and a few CJK punctuation marks, each as a word-initial piece
# and as a "##" continuation: any Korean fixture text tokenises one character per sub-word.
CHARACTERS = (
    [chr(code) for code in range(0xAC00, 0xD7A4)]
    + [chr(code) for code in range(33, 127)]
    + list("《》〈〉‘’“”·")
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIALS)}
    for character in CHARACTERS:
        vocab.setdefault(character, len(vocab))
        vocab.setdefault("##" + character, len(vocab))
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # split on spaces and punctuation
    return wrap_as_bert_tokenizer(backend)


@pytest.fixture(scope="package")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts as a new `reforbert` process would: without Accelerate state.

    Accelerate keeps one process-wide state and refuses an Accelerator with other settings once it
    exists; the Hugging Face Trainer (fine-tuning) sets bf16 where the CPU supports it, while the
    pretraining loop always asks for "no" because it autocasts itself. Only tests run both in one
    process, so only the tests reset it (the way Accelerate's own test cases do).
    """
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
