"""ReforBERT configuration: model sizes, attention backends and the fixed special-token ids."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

# The vocabulary is 8000 SentencePiece pieces plus these 7 specials at fixed ids, so that ids in
# shards, JSON-lines instances and checkpoints mean the same thing everywhere.
SPECIAL_TOKENS: dict[str, int] = {
    "[PAD]": 0,
    "[UNK]": 1,
    "[BOS]": 2,
    "[EOS]": 3,
    "[SEP]": 4,
    "[CLS]": 5,
    "[MASK]": 6,
}
PAD_ID, UNK_ID, BOS_ID, EOS_ID, SEP_ID, CLS_ID, MASK_ID = range(7)
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
DEFAULT_VOCAB_SIZE = 8000 + NUM_SPECIAL_TOKENS
# The label of a position that is not scored (unmasked tokens, sub-word continuations, padding): the
# default ``ignore_index`` of PyTorch's cross-entropy, which the heads and the Trainer rely on.
IGNORE_INDEX = -100

# The seed's table of BERT sizes: (layers, hidden). Heads are hidden / 64, feed-forward 4 x hidden.
PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
}

ATTENTION_BACKENDS = ("lsh", "full", "auto")
# Special-token ids that configurations saved by earlier versions carry and no model reads.
LEGACY_SPECIAL_TOKEN_FIELDS = ("sep_token_id", "cls_token_id", "mask_token_id")


class ReforBertConfig(PretrainedConfig):
    """Configuration of a ReforBERT encoder and its heads.

    Attention uses one shared query/key projection (as in the Reformer), so the same weights serve
    both backends: ``full`` is exact attention, ``lsh`` is locality-sensitive-hashing attention,
    and ``auto`` picks ``full`` up to ``full_attention_max_length`` tokens and ``lsh`` beyond.

    Positions are axial (Reformer paper, section 4 of Kitaev et al. 2020): the position table is
    factored into ``axial_position_shape``, so 65,536 positions cost two tables of 256 rows.

    Dropout is BERT's 0.1 on hidden states but 0 on attention probabilities, the Reformer's default for
    LSH attention: dropping probabilities pushes PyTorch's ``scaled_dot_product_attention`` off its fused
    CPU kernel onto one that materialises every probability and draws a random number for each
    (``benchmarks/pretrain_throughput.py`` measures BERT both ways). Configurations saved with another
    value keep it.
    """

    model_type = "reforbert"

    def __init__(
        self,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        type_vocab_size: int = 2,
        axial_position_shape: tuple[int, int] | list[int] = (256, 256),
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        attention_backend: str = "auto",
        full_attention_max_length: int = 2048,
        lsh_bucket_size: int = 64,
        lsh_num_hashes: int = 4,
        reversible: bool = True,
        feed_forward_chunk_size: int = 0,
        pad_token_id: int = PAD_ID,
        bos_token_id: int = BOS_ID,
        eos_token_id: int = EOS_ID,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        if attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {attention_backend!r}"
            )
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )
        if hidden_size % 2:
            raise ValueError("hidden_size must be even: the axial position embedding splits it in two halves")
        if lsh_bucket_size < 1 or lsh_num_hashes < 1:
            raise ValueError("lsh_bucket_size and lsh_num_hashes must be positive")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.type_vocab_size = type_vocab_size
        self.axial_position_shape = tuple(int(x) for x in axial_position_shape)
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.attention_backend = attention_backend
        self.full_attention_max_length = full_attention_max_length
        self.lsh_bucket_size = lsh_bucket_size
        self.lsh_num_hashes = lsh_num_hashes
        self.reversible = reversible
        self.feed_forward_chunk_size = feed_forward_chunk_size
        # Configurations saved by earlier versions carry LEGACY_SPECIAL_TOKEN_FIELDS; the model never read
        # them, and they load as plain attributes through ``kwargs``. The tokenizer owns the special tokens.
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            # The masked-LM decoder shares the word-embedding matrix, as in BERT.
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def max_position_embeddings(self) -> int:
        return math.prod(self.axial_position_shape)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ReforBertConfig:
        """A config for one of the seed's sizes: tiny, mini, small, medium, base."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        layers, hidden = PRESETS[name]
        sizes = dict(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=hidden // 64,
            intermediate_size=4 * hidden,
        )
        sizes.update(overrides)
        return cls(**sizes)
