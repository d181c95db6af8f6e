"""ReforBERT: a BERT whose encoder is a Reformer.

The encoder follows "Reformer: The Efficient Transformer" (Kitaev, Kaiser and Levskaya, ICLR 2020):
axial position embeddings, attention with one shared query/key projection, locality-sensitive-hashing
(LSH) attention, reversible residual layers (Gomez et al. 2017, "The Reversible Residual Network") and
chunked feed-forward layers. The heads and the pretraining objective (masked language modelling plus
next-sentence prediction) follow "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (Devlin et al., NAACL 2019). Unlike the Reformer language model, every token sees the whole
sequence: LSH chunks look at their neighbours on both sides.

Reading order: embeddings -> attention (shared QK; exact attention; LSH attention: hashing, the reference
chunk attention and the fused kernel tested against it) -> feed-forward -> reversible layer and the
autograd function that recomputes activations -> encoder -> pretrained-model base -> heads -> the
performance devices for CPU training, gathered at the end with the reason and measured gain of each.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from reforbert.configuration_reforbert import IGNORE_INDEX, ReforBertConfig

# Additive score penalties. A token may attend to itself only when no other key exists, so its self-score
# is pushed down by a large but finite amount; padding keys are pushed down much further, so a lone real
# token prefers itself over padding and every row of scores keeps a finite maximum.
SELF_PENALTY = -1e5
PADDING_PENALTY = -1e9
# Eval-mode LSH rotations are drawn from a generator seeded with this plus the layer index, so that a
# model in eval mode is a deterministic function of its weights.
EVAL_HASH_SEED = 4242
# The kernel each attention backend runs. "reference" is the plain PyTorch code the tests hold the others
# to. full: "sdpa" (PyTorch's fused kernels, given a dense additive mask) or "flex" (FlexAttention,
# CUDA only, memory linear in the length; not yet run on a GPU, so not the default). lsh: "chunked"
# (LshChunkAttention: forward and backward of the attention 1.4-2.6x as fast as the reference in four
# fp32 runs at 8 x 512 and 1 x 8,192 tokens on a 2-core CPU shared with other jobs) or "reference".
ATTENTION_KERNELS: dict[str, str] = {"full": "sdpa", "lsh": "chunked"}


# ----------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------


class AxialPositionEmbeddings(nn.Module):
    """Position p = (p // n2, p % n2) embedded as [row(p // n2), column(p % n2)], each half of hidden.

    Only the rows for the positions asked for are used, so the full n1 x n2 table never exists.
    """

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__()
        rows, columns = config.axial_position_shape
        self.columns = columns
        self.max_positions = rows * columns
        self.row_embeddings = nn.Embedding(rows, config.hidden_size // 2)
        self.column_embeddings = nn.Embedding(columns, config.hidden_size // 2)

    def forward(self, length: int) -> torch.Tensor:
        if length > self.max_positions:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings {self.max_positions} "
                f"(axial_position_shape {self.row_embeddings.num_embeddings} x {self.columns})"
            )
        rows_used = -(-length // self.columns)
        # Each row vector repeats along the columns and the column table down the rows: broadcasts, not
        # lookups with repeated indices, whose backward torch.compile (2.13, CPU) got wrong for the rows.
        rows = self.row_embeddings.weight[:rows_used, None, :].expand(-1, self.columns, -1)
        columns = self.column_embeddings.weight[None, :, :].expand(rows_used, -1, -1)
        table = torch.cat([rows, columns], dim=-1).reshape(rows_used * self.columns, -1)
        return table[:length]  # (length, hidden)


class ReforBertEmbeddings(nn.Module):
    """Token + axial position + segment embeddings, then LayerNorm and dropout (as in BERT)."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = AxialPositionEmbeddings(config)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        length = input_ids.shape[1]
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(length)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


# ----------------------------------------------------------------------------------------------------
# Attention: one shared query/key projection, two ways to attend
# ----------------------------------------------------------------------------------------------------


@dataclass
class AttentionContext:
    """What every layer of one forward pass needs to know about the batch, computed once per pass."""

    backend: str  # "full" or "lsh", already resolved from "auto"
    key_is_real: torch.Tensor  # (batch, length) bool, False at padding
    # Whether any key is padding. Decided once per pass: reading a tensor's value on a GPU waits for
    # every kernel queued before it, which in each layer (and again in the reversible replay) would
    # stall the queue. True where unknown; then the padding masks are applied and change nothing.
    has_padding: bool = True
    # Exact attention gets one of: the (batch, 1, length, length) additive mask of the SDPA kernel, or the
    # block mask of the FlexAttention kernel.
    full_attention_bias: torch.Tensor | None = None
    full_attention_block_mask: BlockMask | None = None


def resolve_backend(config: ReforBertConfig, length: int) -> str:
    if config.attention_backend == "auto":
        return "full" if length <= config.full_attention_max_length else "lsh"
    return config.attention_backend


def full_attention_bias(key_is_real: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for exact attention: padding keys and (softly) the token itself are pushed down."""
    length = key_is_real.shape[1]
    padding = torch.zeros(key_is_real.shape, dtype=dtype, device=key_is_real.device)
    padding.masked_fill_(~key_is_real, PADDING_PENALTY)
    self_bias = torch.eye(length, dtype=dtype, device=key_is_real.device) * SELF_PENALTY
    return padding[:, None, None, :] + self_bias


def full_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, dropout_p: float
) -> torch.Tensor:
    """Exact attention over (batch, heads, length, head_dim) tensors; keys are already unit length.

    The reference, and on CPU also the fastest path: PyTorch's fused CPU kernel takes the dense mask at
    no measurable cost (fp32, 8 x 512 tokens, forward and backward: the same time as without a mask).
    """
    return F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=bias.to(queries.dtype), dropout_p=dropout_p
    )


# Keys and queries per FlexAttention block (its default).
FLEX_BLOCK_SIZE = 128


def full_attention_block_mask(key_is_real: torch.Tensor) -> BlockMask:
    """FlexAttention block mask that hides padding keys. Built from per-block counts of real keys, so it
    takes (length / 128)^2 entries, never length^2: key blocks without a real key are skipped, blocks of
    real keys only run unmasked, and the rest apply the padding rule per key."""
    batch, length = key_is_real.shape
    n_blocks = -(-length // FLEX_BLOCK_SIZE)
    padded = F.pad(key_is_real, (0, n_blocks * FLEX_BLOCK_SIZE - length), value=False)
    real_keys = padded.view(batch, n_blocks, FLEX_BLOCK_SIZE).sum(dim=-1)
    full = real_keys == FLEX_BLOCK_SIZE
    partial = (real_keys > 0) & ~full

    def per_query_block(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, key blocks) bool -> how many and which key blocks, the same for every query block."""
        count = selected.sum(dim=-1, dtype=torch.int32)
        index = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return (
            count.view(batch, 1, 1).expand(batch, 1, n_blocks).contiguous(),
            index.view(batch, 1, 1, n_blocks).expand(batch, 1, n_blocks, n_blocks).contiguous(),
        )

    def key_is_not_padding(batch_index, head_index, query_index, key_index):
        return key_is_real[batch_index, key_index]

    return BlockMask.from_kv_blocks(
        *per_query_block(partial),
        *per_query_block(full),
        BLOCK_SIZE=FLEX_BLOCK_SIZE,
        mask_mod=key_is_not_padding,
        seq_lengths=(length, length),
    )


def _self_penalty(score, batch_index, head_index, query_index, key_index):
    return torch.where(query_index == key_index, score + SELF_PENALTY, score)


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def flex_full_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    block_mask: BlockMask,
    compiled: bool = True,
) -> torch.Tensor:
    """Exact attention as :func:`full_attention` computes it, without an L x L mask in memory: the
    self-penalty is a score modification and padding a block mask, so the kernel runs in memory linear in
    the length. Hidden padding keys get probability 0, as the reference's penalty gives them, in every
    sequence with at least one real token. No attention dropout; compiled (CUDA) unless told otherwise.
    """
    attend = _compiled_flex_attention() if compiled else flex_attention
    return attend(queries, keys, values, score_mod=_self_penalty, block_mask=block_mask)


# ----------------------------------------------------------------------------------------------------
# LSH attention (Reformer, section 2): hash, sort by bucket, attend within chunks of the sorted order
# ----------------------------------------------------------------------------------------------------

# Positions hashed at a time. The rotated vectors are (positions x rotation columns) per head and round,
# so hashing everything at once would need memory that grows with the length times the bucket count;
# in slices it stays at a few hundred MB.
HASH_SLICE = 4096
# Up to this many chunks every round draws one rotation column per chunk (2 x chunks buckets, the
# paper's rule). Beyond it the buckets are factorised, as in the Reformer paper and Hugging Face's
# Reformer: two small rotations whose winners combine into b1 x b2 buckets, so hashing costs about
# sqrt(chunks) instead of `chunks` multiply-adds per position. At 32 chunks (2,048 tokens in buckets of
# 64) one rotation costs 32 / 384 of the chunk attention's multiply-adds; at 1,024 chunks it would cost
# more than the attention itself, and the factorised hash measured 8.2x faster there (65,536 tokens).
SINGLE_ROTATION_MAX_CHUNKS = 32


def rotation_factors(n_chunks: int) -> tuple[int, ...]:
    """Rotation columns per factor of the bucket id: bucket ids combine one winner of [xR, -xR] per
    factor, so a factor of k columns contributes 2k buckets. About two buckets per chunk either way."""
    if n_chunks <= SINGLE_ROTATION_MAX_CHUNKS:
        return (n_chunks,)
    first = round(math.sqrt(n_chunks / 2))
    return (first, math.ceil(n_chunks / (2 * first)))


def hash_to_buckets(
    vectors: torch.Tensor, rotations: torch.Tensor, factors: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Angular LSH: per factor, the winner of argmax over [xR, -xR] (the sign trick doubles the buckets
    for free); the winners are the digits of the bucket id, the first factor's the lowest.

    (batch, heads, length, head_dim) and (heads, head_dim, rounds, sum(factors)) ->
    (batch, heads, rounds, length) bucket ids, chosen in full precision. ``factors`` defaults to one
    factor holding every rotation column.
    """
    factors = factors or (rotations.shape[-1],)
    slices = []
    with torch.autocast(vectors.device.type, enabled=False):
        for start in range(0, vectors.shape[2], HASH_SLICE):
            part = vectors[:, :, start : start + HASH_SLICE].float()
            rotated = torch.einsum("bhld,hdrk->bhrlk", part, rotations.float())
            buckets, place_value = None, 1
            for columns in rotated.split(factors, dim=-1):
                top, top_index = columns.max(dim=-1)
                bottom, bottom_index = columns.min(dim=-1)
                # -min(xR) is max(-xR): the bucket lies in the negated half when it beats the best positive.
                digit = torch.where(-bottom > top, bottom_index + columns.shape[-1], top_index)
                buckets = digit if buckets is None else buckets + place_value * digit
                place_value *= 2 * columns.shape[-1]
            slices.append(buckets)
    return torch.cat(slices, dim=-1)


def lsh_sort_order(
    queries: torch.Tensor,
    key_is_real: torch.Tensor,
    rotations: torch.Tensor,
    factors: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """(batch, heads, rounds, length): each round's positions sorted by (bucket, position)."""
    length = queries.shape[2]
    factors = factors or (rotations.shape[-1],)
    n_buckets = math.prod(2 * columns for columns in factors)
    buckets = hash_to_buckets(queries, rotations, factors)
    # Padding goes to an extra last bucket, so it never displaces real tokens from their chunks.
    buckets = buckets.masked_fill(~key_is_real[:, None, None, :], n_buckets)
    positions = torch.arange(length, device=queries.device)
    return (buckets * length + positions).argsort(dim=-1)


def _look_around_offsets(n_chunks: int) -> list[int]:
    """Which chunks chunk i attends to, relative to i. Bidirectional: i-1, i and i+1 (cyclically).
    With two chunks that would count the other chunk twice, with one chunk itself three times, so
    those cases list each chunk once."""
    return [0] if n_chunks == 1 else [0, 1] if n_chunks == 2 else [-1, 0, 1]


def mix_rounds(outputs: torch.Tensor, log_normalisers: torch.Tensor) -> torch.Tensor:
    """Weigh each round's output (b, h, rounds, length, d) by the softmax of its log-sum-exp
    (b, h, rounds, length): exact attention over the union of keys when the rounds agree."""
    round_weights = torch.softmax(log_normalisers, dim=2).unsqueeze(-1)
    if torch.is_grad_enabled() and (outputs.requires_grad or log_normalisers.requires_grad):
        return (outputs.float() * round_weights).sum(dim=2).to(outputs.dtype)
    # Without autograd (inference, the first pass of reversible layers) a running float32 sum over the
    # rounds, with no (b, h, rounds, length, d) product in memory, measured about 10x faster. Under
    # autograd its backward costs more than the product's, so training takes the form above.
    mixed = outputs[:, :, 0].float() * round_weights[:, :, 0]
    for index in range(1, outputs.shape[2]):
        mixed = mixed.addcmul_(outputs[:, :, index], round_weights[:, :, index])
    return mixed.to(outputs.dtype)


def lsh_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_is_real: torch.Tensor,
    rotations: torch.Tensor,
    bucket_size: int,
    dropout_p: float,
    training: bool,
    factors: tuple[int, ...] | None = None,
    has_padding: bool | None = None,
) -> torch.Tensor:
    """Multi-round LSH attention over (batch, heads, length, head_dim) tensors; keys are unit length.

    The length must already be a multiple of ``bucket_size`` and ``rotations`` is
    (heads, head_dim, rounds, sum(factors)). Each round hashes the shared query/key vectors to buckets,
    sorts positions by (bucket, position), cuts the order into chunks of ``bucket_size`` and lets each
    chunk attend to itself and its neighbours on both sides; rounds are mixed by :func:`mix_rounds`.
    ``has_padding`` says whether ``key_is_real`` has a False anywhere (None: look, see AttentionContext).
    """
    order = lsh_sort_order(queries, key_is_real, rotations, factors)
    if (
        ATTENTION_KERNELS["lsh"] == "reference"
        or (training and dropout_p > 0.0)  # dropout needs the probabilities materialised
        or torch.compiler.is_compiling()  # the compiler fuses the reference's steps itself
    ):
        outputs, log_normalisers = lsh_chunk_attention_reference(
            queries, keys, values, key_is_real, order, bucket_size, dropout_p, training
        )
    else:
        if has_padding is None:
            has_padding = not bool(key_is_real.all())
        outputs, log_normalisers = LshChunkAttention.apply(
            queries, keys, values, key_is_real, order, bucket_size, has_padding
        )
    return mix_rounds(outputs, log_normalisers)


def _gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (b, h, L, d) and index (b, h, r, L') -> (b, h, r, L', d): rows picked per hashing round."""
    rounds = index.shape[2]
    expanded = tensor.unsqueeze(2).expand(-1, -1, rounds, -1, -1)
    return expanded.gather(3, index.unsqueeze(-1).expand(-1, -1, -1, -1, tensor.shape[-1]))


def _look_around(chunks: torch.Tensor) -> torch.Tensor:
    """(..., n_chunks, chunk, d) -> (..., n_chunks, window * chunk, d): each chunk with its neighbours."""
    offsets = _look_around_offsets(chunks.shape[-3])
    # roll by -offset puts chunk i + offset at place i.
    return torch.cat([chunks.roll(-offset, dims=-3) for offset in offsets], dim=-2)


def _lsh_self_bias(n_chunks: int, bucket_size: int, device: torch.device) -> torch.Tensor:
    """(chunk, window * chunk) additive bias that pushes down each query's score for itself.

    Positions are unique within a round, so a query meets itself only in its own chunk (offset 0 of
    the look-around window) at its own place there: a diagonal in one fixed block.
    """
    own = torch.diag(torch.full((bucket_size,), SELF_PENALTY, device=device))
    blocks = [own if offset == 0 else torch.zeros_like(own) for offset in _look_around_offsets(n_chunks)]
    return torch.cat(blocks, dim=-1)


def lsh_chunk_attention_reference(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_is_real: torch.Tensor,
    order: torch.Tensor,
    bucket_size: int,
    dropout_p: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk attention in plain PyTorch, the oracle of :class:`LshChunkAttention`: every round's sorted
    rows and their look-around windows are materialised. Returns each round's output
    (b, h, rounds, length, d) and log-sum-exp (b, h, rounds, length), back in position order."""
    batch, heads, length, head_dim = queries.shape
    rounds = order.shape[2]
    n_chunks = length // bucket_size

    def chunked(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(*tensor.shape[:3], n_chunks, bucket_size, *tensor.shape[4:])

    sorted_queries = chunked(_gather_rows(queries, order))
    sorted_keys = _look_around(chunked(_gather_rows(keys, order)))
    sorted_values = _look_around(chunked(_gather_rows(values, order)))
    sorted_real = key_is_real[:, None, None, :].expand(-1, heads, rounds, -1).gather(3, order)
    key_real = _look_around(chunked(sorted_real).unsqueeze(-1)).squeeze(-1)

    # Scores in float32: the softmax and the log-sum-exp that mixes rounds are sensitive to rounding.
    scores = torch.matmul(sorted_queries, sorted_keys.transpose(-1, -2)).float() / math.sqrt(head_dim)
    scores = scores.masked_fill(~key_real.unsqueeze(-2), PADDING_PENALTY)
    scores = scores + _lsh_self_bias(n_chunks, bucket_size, scores.device)
    log_normaliser = scores.logsumexp(dim=-1, keepdim=True)
    # softmax, not exp(scores - log_normaliser): that would not sum to one where the log-sum-exp rounds
    # (a query that meets only padding, see LshChunkAttention).
    probabilities = torch.softmax(scores, dim=-1)
    probabilities = dropout(probabilities, dropout_p, training)
    sorted_output = torch.matmul(probabilities.to(sorted_values.dtype), sorted_values)

    # Undo the sort: the inverse permutation of each round puts every row back at its position.
    positions = torch.arange(length, device=queries.device)
    undo = torch.empty_like(order).scatter_(-1, order, positions.expand_as(order))
    output = sorted_output.reshape(batch, heads, rounds, length, head_dim)
    output = output.gather(3, undo.unsqueeze(-1).expand(-1, -1, -1, -1, head_dim))
    log_normaliser = log_normaliser.reshape(batch, heads, rounds, length).gather(3, undo)
    return output, log_normaliser


# Score elements (float32) computed at once by the fused chunk attention; whole hashing rounds are
# grouped up to this size, so peak memory does not grow with batch, heads or rounds.
LSH_SCORES_PER_SLICE = 1 << 20


def _batched_products_into(
    target: torch.Tensor, left: torch.Tensor, right: torch.Tensor, alpha: float = 1.0, accumulate: bool = True
) -> None:
    """target += alpha * (left @ right), batched, in place; with ``accumulate`` False, target = that
    product (its old values ignored). ``target`` is float32; the factors may be of a lower precision,
    whose product is then rounded to it before it is scaled and stored (as autocast would)."""
    if left.dtype == target.dtype:
        # One kernel, no temporary product; beta 0 ignores target's old values, NaN included.
        target.baddbmm_(left, right, beta=1.0 if accumulate else 0.0, alpha=alpha)
    elif accumulate:
        target.add_(torch.bmm(left, right), alpha=alpha)
    else:
        torch.mul(torch.bmm(left, right), alpha, out=target)


class LshChunkAttention(torch.autograd.Function):
    """Chunk attention over the sorted order without materialised look-around windows.

    Each round's sorted rows are gathered once into a layout that puts copies of the round's last and
    first chunk around its chunks (its cyclic neighbours): chunks 0, 1, ..., n + 1, where chunk 0 is
    chunk n and chunk n + 1 is chunk 1. With rounds laid one after another, "chunk i against chunk
    i + offset" is then one batched matrix product of two shifted views of the same buffer, for a whole
    slice of rounds at once. Rows of the extra chunks are computed and thrown away: 2 / (n + 2) of the work.

    Forward keeps neither scores nor probabilities: backward recomputes them a slice of rounds at a
    time from each row's saved maximum score and log of its sum of exponentials (as flash attention
    does), so memory stays linear in the length. The two are kept apart rather than as their sum, the
    log-sum-exp: for a query that meets only padding, every score is PADDING_PENALTY, beside which the
    log of the sum vanishes in float32 and its probabilities would no longer sum to one.
    Outputs and gradients equal :func:`lsh_chunk_attention_reference` with attention dropout 0.
    """

    @staticmethod
    def forward(ctx, queries, keys, values, key_is_real, order, bucket_size, has_padding=True):
        batch, heads, length, head_dim = queries.shape
        rounds = order.shape[2]
        layout = _SortedChunkLayout(key_is_real, order, bucket_size, has_padding)
        sources = [_rows_by_position(t) for t in (queries, keys, values)]
        outputs = values.new_empty(batch * heads * rounds * length, head_dim)
        maxima, log_row_sums = (
            torch.empty(batch * heads * rounds * length, device=values.device) for _ in range(2)
        )
        with torch.autocast(queries.device.type, enabled=False):
            for groups in layout.slices():
                sorted_queries, sorted_keys, sorted_values = (layout.gather(s, groups) for s in sources)
                scores = layout.scores(sorted_queries, sorted_keys, groups)
                # One pass of exponentials: weights exp(score - row maximum), whose row sums normalise
                # the output rows instead of every weight, and give the log-sum-exp.
                maximum = scores.amax(dim=(0, 3))
                weights = scores.sub_(maximum[None, :, :, None]).exp_()
                row_sums = weights.sum(dim=(0, 3))
                sorted_output = torch.zeros(weights.shape[1:3] + (head_dim,), device=values.device)
                for offset_weights, offset in zip(weights, layout.offsets, strict=True):
                    shifted_values = layout.shifted(sorted_values, offset)
                    _batched_products_into(sorted_output, offset_weights.to(values.dtype), shifted_values)
                sorted_output.div_(row_sums.unsqueeze(-1))
                layout.scatter(outputs, sorted_output.to(values.dtype), groups)
                layout.scatter(maxima, maximum, groups)
                layout.scatter(log_row_sums, row_sums.log_(), groups)
        outputs = outputs.view(batch, heads, rounds, length, head_dim)
        log_normalisers = (maxima + log_row_sums).view(batch, heads, rounds, length)
        ctx.layout = layout
        ctx.save_for_backward(queries, keys, values, outputs, maxima, log_row_sums)
        return outputs, log_normalisers

    @staticmethod
    def backward(ctx, grad_outputs, grad_log_normalisers):
        queries, keys, values, outputs, maxima, log_row_sums = ctx.saved_tensors
        layout: _SortedChunkLayout = ctx.layout
        inverse_scale = 1.0 / math.sqrt(queries.shape[-1])
        if grad_outputs is None:
            grad_outputs = torch.zeros_like(outputs)
        if grad_log_normalisers is None:
            grad_log_normalisers = torch.zeros(outputs.shape[:-1], device=outputs.device)
        sources = [_rows_by_position(t) for t in (queries, keys, values)]
        grads = [torch.zeros(s.shape, device=s.device) for s in sources]
        # d loss / d score_j = p_j (d loss / d p_j - sum_k p_k d loss / d p_k + d loss / d lse), and the
        # sum is dO . O, one number per row.
        row_terms = grad_log_normalisers - (grad_outputs.float() * outputs.float()).sum(dim=-1)
        grad_rows = grad_outputs.reshape(-1, outputs.shape[-1])
        with torch.autocast(queries.device.type, enabled=False):
            for groups in layout.slices():
                sorted_queries, sorted_keys, sorted_values = (layout.gather(s, groups) for s in sources)
                probabilities = layout.probabilities(
                    sorted_queries, sorted_keys, groups, maxima, log_row_sums
                )
                # Rows of the extra chunks get no gradient: their outputs were thrown away.
                sorted_grad = layout.gather(grad_rows, groups, by_round=True, zero_extra_chunks=True)[1:-1]
                sorted_terms = layout.gather(
                    row_terms.reshape(-1, 1), groups, by_round=True, zero_extra_chunks=True
                )[1:-1]
                inner_queries = sorted_queries[1:-1]
                grad_queries = torch.zeros(inner_queries.shape, device=queries.device)
                grad_keys = torch.zeros(sorted_keys.shape, device=keys.device)
                grad_values = torch.zeros(sorted_values.shape, device=values.device)
                for offset_probabilities, offset in zip(probabilities, layout.offsets, strict=True):
                    shifted_keys = layout.shifted(sorted_keys, offset)
                    shifted_values = layout.shifted(sorted_values, offset)
                    # d loss / d p, then d loss / d score, in place on the fresh float32 product.
                    grad_scores = torch.bmm(sorted_grad, shifted_values.transpose(1, 2)).float()
                    grad_scores.add_(sorted_terms).mul_(offset_probabilities)
                    # Scores overwritten by the padding penalty do not depend on queries or keys.
                    if layout.has_padding:
                        grad_scores.masked_fill_(layout.key_is_padding(groups, offset), 0.0)
                    # The score's 1 / sqrt(head_dim) enters the two products below as their alpha.
                    grad_scores = grad_scores.to(queries.dtype)
                    _batched_products_into(grad_queries, grad_scores, shifted_keys, inverse_scale)
                    _batched_products_into(
                        layout.shifted(grad_keys, offset),
                        grad_scores.transpose(1, 2),
                        inner_queries,
                        inverse_scale,
                    )
                    transposed = offset_probabilities.to(values.dtype).transpose(1, 2)
                    _batched_products_into(layout.shifted(grad_values, offset), transposed, sorted_grad)
                grad_queries = F.pad(grad_queries, (0, 0, 0, 0, 1, 1))
                for grad, sorted_rows in zip(grads, (grad_queries, grad_keys, grad_values), strict=True):
                    layout.scatter_add(grad, sorted_rows, groups)
        grad_queries, grad_keys, grad_values = (
            _from_rows_by_position(grad, like)
            for grad, like in zip(grads, (queries, keys, values), strict=True)
        )
        return grad_queries, grad_keys, grad_values, None, None, None, None


def _rows_by_position(tensor: torch.Tensor) -> torch.Tensor:
    """(batch, heads, length, d) -> (batch * length * heads, d), row (b * length + position) * heads + h:
    free for the head-split view of a (batch, length, hidden) projection."""
    batch, heads, length, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch * length * heads, head_dim)


def _from_rows_by_position(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = like.shape
    return rows.view(batch, length, heads, head_dim).transpose(1, 2).to(like.dtype)


class _SortedChunkLayout:
    """Index bookkeeping of :class:`LshChunkAttention` for one call.

    A "group" is one hashing round of one head of one sequence. Its sorted order, extended by a copy of
    its last chunk in front and of its first chunk behind, says which rows fill the group's n + 2 chunks.
    Gathered tensors are (groups in the slice x (n + 2), chunk, d); inner rows are all but the first and
    last chunk of that, the rows whose scores are computed.
    """

    def __init__(
        self, key_is_real: torch.Tensor, order: torch.Tensor, bucket_size: int, has_padding: bool = True
    ) -> None:
        batch, heads, rounds, length = order.shape
        self.chunk = bucket_size
        self.length = length
        self.n_chunks = length // bucket_size
        self.offsets = _look_around_offsets(self.n_chunks)
        self.groups = batch * heads * rounds
        extended = torch.cat([order[..., -bucket_size:], order, order[..., :bucket_size]], dim=-1)
        sequence_rows = torch.arange(batch, device=order.device).view(-1, 1, 1, 1) * length + extended
        heads_index = torch.arange(heads, device=order.device).view(1, -1, 1, 1)
        # Rows of (batch * length * heads, d) query/key/value tensors, see _rows_by_position.
        self.position_rows = (sequence_rows * heads + heads_index).reshape(self.groups, -1)
        # Rows of (groups * length, ...) per-round tensors: outputs and log-sum-exps.
        group_index = torch.arange(self.groups, device=order.device).unsqueeze(1)
        self.round_rows = group_index * length + extended.reshape(self.groups, -1)
        self.key_is_real = key_is_real.reshape(-1)[sequence_rows].reshape(self.groups, -1)
        # Most batches have no padding; then the padding masks change nothing and are skipped.
        self.has_padding = has_padding
        scores_per_group = (self.n_chunks + 2) * len(self.offsets) * bucket_size**2
        self.groups_per_slice = max(1, LSH_SCORES_PER_SLICE // scores_per_group)

    def slices(self) -> Iterator[slice]:
        for start in range(0, self.groups, self.groups_per_slice):
            yield slice(start, min(start + self.groups_per_slice, self.groups))

    def gather(
        self, source: torch.Tensor, groups: slice, by_round: bool = False, zero_extra_chunks: bool = False
    ) -> torch.Tensor:
        """Rows of ``source`` ((b * length * heads, d), or (groups * length, d) with ``by_round``) in the
        extended sorted order of ``groups``, as (groups x (n + 2), chunk, d)."""
        index = (self.round_rows if by_round else self.position_rows)[groups].reshape(-1)
        # index_select copies whole rows; advanced indexing measured about 4x slower here on CPU.
        gathered = source.index_select(0, index).view(-1, self.chunk, source.shape[-1])
        if zero_extra_chunks:
            per_group = gathered.view(-1, self.n_chunks + 2, *gathered.shape[1:])
            per_group[:, 0] = 0
            per_group[:, -1] = 0
        return gathered

    @staticmethod
    def shifted(chunks: torch.Tensor, offset: int) -> torch.Tensor:
        """The chunks that inner chunk t meets at ``offset``: chunk t + offset, a view."""
        return chunks[1 + offset : chunks.shape[0] - 1 + offset]

    def key_is_padding(self, groups: slice, offset: int) -> torch.Tensor:
        """(inner chunks, 1, chunk) bool: the keys at ``offset`` that are padding."""
        real = self.key_is_real[groups].reshape(-1, self.chunk)
        return ~self.shifted(real, offset).unsqueeze(1)

    def scores(self, sorted_queries: torch.Tensor, sorted_keys: torch.Tensor, groups: slice) -> torch.Tensor:
        """Attention scores (offsets, inner chunks, chunk, chunk) in float32, penalties included."""
        head_dim = sorted_queries.shape[-1]
        inner_queries = sorted_queries[1:-1]
        scores = torch.empty(
            len(self.offsets), *inner_queries.shape[:2], self.chunk, device=sorted_queries.device
        )
        # The reference's steps in its order: scale, pad, then the self-penalty; the scale rides on the
        # product (times 1 / sqrt(head_dim) instead of a division: equal up to rounding).
        for offset_scores, offset in zip(scores, self.offsets, strict=True):
            shifted_keys = self.shifted(sorted_keys, offset).transpose(1, 2)
            _batched_products_into(
                offset_scores, inner_queries, shifted_keys, 1.0 / math.sqrt(head_dim), accumulate=False
            )
        if self.has_padding:
            for offset_scores, offset in zip(scores, self.offsets, strict=True):
                offset_scores.masked_fill_(self.key_is_padding(groups, offset), PADDING_PENALTY)
        # Positions are unique within a round: a query meets itself at offset 0, at its own place.
        scores[self.offsets.index(0)].diagonal(dim1=-2, dim2=-1).add_(SELF_PENALTY)
        return scores

    def probabilities(
        self,
        sorted_queries: torch.Tensor,
        sorted_keys: torch.Tensor,
        groups: slice,
        maxima: torch.Tensor,
        log_row_sums: torch.Tensor,
    ) -> torch.Tensor:
        """Attention probabilities (offsets, inner chunks, chunk, chunk) in float32: the scores less each
        row's saved maximum and then its log of the sum of exponentials, both (groups * length,)."""
        rows = self.round_rows[groups].reshape(-1)
        scores = self.scores(sorted_queries, sorted_keys, groups)
        for per_row in (maxima, log_row_sums):
            scores.sub_(per_row.index_select(0, rows).view(-1, self.chunk)[None, 1:-1, :, None])
        return scores.exp_()

    def scatter(self, target: torch.Tensor, inner: torch.Tensor, groups: slice) -> None:
        """Write rows computed for inner chunks, (inner chunks, chunk, ...), to ``target`` (groups * length,
        ...) at their positions; rows of the extra chunks are dropped."""
        n_groups = groups.stop - groups.start
        row_size = inner[0, 0].numel()
        stride = (inner.stride(0) * (self.n_chunks + 2), inner.stride(0), *inner.stride()[1:])
        # Inner chunk t is chunk t + 1 of the extended layout: group g's real chunks are inner chunks
        # g (n + 2) ... g (n + 2) + n - 1.
        real_chunks = inner.as_strided((n_groups, self.n_chunks, *inner.shape[1:]), stride)
        positions = self.round_rows[groups, self.chunk : self.chunk + self.length].reshape(-1)
        target.view(-1, row_size).index_copy_(0, positions, real_chunks.reshape(-1, row_size))

    def scatter_add(self, target: torch.Tensor, gathered: torch.Tensor, groups: slice) -> None:
        """Add rows in the extended sorted order, (groups x (n + 2), chunk, d), back at their sources."""
        target.index_add_(0, self.position_rows[groups].reshape(-1), gathered.view(-1, gathered.shape[-1]))


class ReforBertSelfAttention(nn.Module):
    """Shared-QK attention: one projection gives queries and keys (keys unit length), another values."""

    def __init__(self, config: ReforBertConfig, layer_index: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.layer_index = layer_index
        self.config = config
        self.query_key = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.value = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.dropout_p = config.attention_probs_dropout_prob
        # Eval-mode rotations depend only on the layer and their shape: keep the last ones drawn.
        self._eval_rotations: tuple[tuple, torch.Tensor] | None = None

    def _split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tensor.shape
        return tensor.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _rotations(self, columns: int, device: torch.device) -> torch.Tensor:
        shape = (self.num_heads, self.head_dim, self.config.lsh_num_hashes, columns)
        if self.training:
            # Fresh hashes every step; the reversible backward replays them by restoring the RNG state.
            return torch.randn(shape, device=device)
        key = (shape, device)
        if self._eval_rotations is None or self._eval_rotations[0] != key:
            generator = torch.Generator().manual_seed(EVAL_HASH_SEED + self.layer_index)
            self._eval_rotations = (key, torch.randn(shape, generator=generator).to(device))
        return self._eval_rotations[1]

    def forward(self, hidden_states: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        batch, length, hidden = hidden_states.shape
        queries = self._split_heads(self.query_key(hidden_states))
        # Under autocast the norm may run in float32; keep keys in the queries' dtype for the kernels.
        keys = F.normalize(queries, dim=-1).to(queries.dtype)
        values = self._split_heads(self.value(hidden_states))
        dropout_p = self.dropout_p if self.training else 0.0
        if context.full_attention_block_mask is not None:
            output = flex_full_attention(queries, keys, values, context.full_attention_block_mask)
        elif context.backend == "full":
            output = full_attention(queries, keys, values, context.full_attention_bias, dropout_p)
        else:
            output = self._lsh(queries, keys, values, context, dropout_p)
        return output.transpose(1, 2).reshape(batch, length, hidden)

    def _lsh(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        context: AttentionContext,
        dropout_p: float,
    ) -> torch.Tensor:
        bucket_size = self.config.lsh_bucket_size
        key_is_real = context.key_is_real
        length = queries.shape[2]
        padded_length = max(1, math.ceil(length / bucket_size)) * bucket_size
        extra = padded_length - length
        if extra:
            queries, keys, values = (F.pad(t, (0, 0, 0, extra)) for t in (queries, keys, values))
            key_is_real = F.pad(key_is_real, (0, extra), value=False)
        # About two buckets per chunk (Reformer, section 2).
        factors = rotation_factors(padded_length // bucket_size)
        rotations = self._rotations(sum(factors), queries.device)
        output = lsh_attention(
            queries,
            keys,
            values,
            key_is_real,
            rotations,
            bucket_size,
            dropout_p,
            self.training,
            factors,
            has_padding=context.has_padding or extra > 0,  # the bucket padding is padding too
        )
        return output[:, :, :length]


class ReforBertAttentionBlock(nn.Module):
    """Pre-LN attention branch F of a reversible layer: LayerNorm, attention, output projection, dropout."""

    def __init__(self, config: ReforBertConfig, layer_index: int) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attention = ReforBertSelfAttention(config, layer_index)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        attended = self.self_attention(self.LayerNorm(hidden_states), context)
        return self.dropout(self.output(attended))


# ----------------------------------------------------------------------------------------------------
# Feed-forward, optionally over chunks of the sequence
# ----------------------------------------------------------------------------------------------------


class ReforBertFeedForwardBlock(nn.Module):
    """Pre-LN feed-forward branch G. With ``feed_forward_chunk_size`` > 0 the positions are processed a
    chunk at a time, so the (length x intermediate) activation exists for one chunk only."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__()
        self.config = config
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.dense_in(self.LayerNorm(hidden_states)))
        return self.dropout(self.dense_out(hidden_states))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        chunk_size = self.config.feed_forward_chunk_size
        if chunk_size <= 0 or chunk_size >= hidden_states.shape[1]:
            return self._feed_forward(hidden_states)
        chunks = hidden_states.split(chunk_size, dim=1)
        return torch.cat([self._feed_forward(chunk) for chunk in chunks], dim=1)


# ----------------------------------------------------------------------------------------------------
# Reversible layers (RevNet): Y1 = X1 + F(X2), Y2 = X2 + G(Y1), so X2 = Y2 - G(Y1), X1 = Y1 - F(X2)
# ----------------------------------------------------------------------------------------------------


class ReforBertLayer(nn.Module):
    """One reversible layer: attention branch F and feed-forward branch G over two residual streams."""

    def __init__(self, config: ReforBertConfig, layer_index: int) -> None:
        super().__init__()
        self.attention = ReforBertAttentionBlock(config, layer_index)
        self.feed_forward = ReforBertFeedForwardBlock(config)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, context: AttentionContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = x1 + self.attention(x2, context)
        y2 = x2 + self.feed_forward(y1)
        return y1, y2


class RandomState:
    """The CPU (and CUDA) generator state before a branch ran, so a recompute draws the same dropout
    masks and LSH rotations."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        # fork_rng puts the caller's state back afterwards, so replaying does not disturb training.
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class ReversibleFunction(torch.autograd.Function):
    """Runs all layers without keeping activations; backward rebuilds each layer's inputs from its
    outputs and recomputes the branches, replaying their random state. Memory is then independent of
    the number of layers. Layer parameters are passed as inputs so their gradients flow through
    autograd like any other (``torch.autograd.grad`` and gradient hooks keep working)."""

    @staticmethod
    def forward(ctx, x1, x2, layers, context, *parameters):
        ctx.layers = layers
        ctx.context = context
        ctx.parameters = parameters
        device_type = x1.device.type
        # The recompute in backward must run under the same autocast as this forward.
        ctx.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        ctx.random_states = []
        with torch.no_grad():
            for layer in layers:
                attention_state = RandomState(x1.device)
                x1 = x1 + layer.attention(x2, context)
                feed_forward_state = RandomState(x1.device)
                x2 = x2 + layer.feed_forward(x1)
                ctx.random_states.append((attention_state, feed_forward_state))
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, grad_y1, grad_y2):
        y1, y2 = ctx.saved_tensors
        device_type, autocast_enabled, autocast_dtype = ctx.autocast
        wanted = {id(p) for p in ctx.parameters}
        parameter_grads: dict[int, torch.Tensor | None] = {}

        def recompute(branch, branch_input, grad_output, state, *extra):
            """Re-run one branch on a leaf copy of its input; return its output and the gradients."""
            parameters = [p for p in branch.parameters() if id(p) in wanted]
            with torch.enable_grad(), torch.autocast(device_type, autocast_dtype, enabled=autocast_enabled):
                leaf = branch_input.detach().requires_grad_()
                with state.replay():
                    output = branch(leaf, *extra)
            grads = torch.autograd.grad(output, [leaf, *parameters], grad_output, allow_unused=True)
            for parameter, grad in zip(parameters, grads[1:], strict=True):
                parameter_grads[id(parameter)] = grad
            return output.detach(), grads[0]

        for layer, (attention_state, feed_forward_state) in zip(
            reversed(ctx.layers), reversed(ctx.random_states), strict=True
        ):
            g_y1, grad_through_g = recompute(layer.feed_forward, y1, grad_y2, feed_forward_state)
            grad_y1 = grad_y1 + grad_through_g
            x2 = y2 - g_y1
            f_x2, grad_through_f = recompute(layer.attention, x2, grad_y1, attention_state, ctx.context)
            x1 = y1 - f_x2
            grad_y2 = grad_y2 + grad_through_f
            y1, y2 = x1, x2
        return (grad_y1, grad_y2, None, None, *(parameter_grads.get(id(p)) for p in ctx.parameters))


class ReforBertEncoder(nn.Module):
    """The layer stack. The input is copied into both streams; the output is their mean, normalised."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            ReforBertLayer(config, index) for index in range(config.num_hidden_layers)
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, context: AttentionContext, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The normalised output and, if asked, the states between layers: the embeddings, the mean of
        the two streams after each inner layer, and the normalised output (as many as BERT returns)."""
        x1 = x2 = hidden_states
        if self.config.reversible and torch.is_grad_enabled() and not output_hidden_states:
            parameters = [p for p in self.layers.parameters() if p.requires_grad]
            x1, x2 = ReversibleFunction.apply(x1, x2, self.layers, context, *parameters)
            return self.LayerNorm((x1 + x2) / 2), None
        # Same layers with ordinary autograd: keeps activations, needs no recompute. Intermediate states
        # only exist here, so asking for them gives up the reversible memory saving.
        states = [hidden_states]
        for layer in self.layers:
            x1, x2 = layer(x1, x2, context)
            states.append((x1 + x2) / 2)
        output = self.LayerNorm((x1 + x2) / 2)
        return output, (*states[:-1], output) if output_hidden_states else None


# ----------------------------------------------------------------------------------------------------
# Pretrained-model base and the bare encoder
# ----------------------------------------------------------------------------------------------------


class ReforBertPreTrainedModel(PreTrainedModel):
    """Base of all ReforBERT models: config class, checkpoint prefix and weight initialisation."""

    config_class = ReforBertConfig
    base_model_prefix = "reforbert"
    _no_split_modules = ["ReforBertLayer"]
    # The heads return batch-mean losses and ignore ``num_items_in_batch``: tell the Trainer, so that it
    # scales the loss for gradient accumulation itself.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's scheme: Linear and Embedding weights ~ N(0, initializer_range) with zero biases and a zero
        # padding row, LayerNorm (1, 0). Every parameter here belongs to one of those module types (the
        # axial position factors are Embeddings), so the library's rule covers them all; the decoder bias
        # is zeroed explicitly because its weight is replaced by the tied word embeddings.
        super()._init_weights(module)
        if isinstance(module, ReforBertLMPredictionHead) and module.decoder.bias is not None:
            init.zeros_(module.decoder.bias)


class ReforBertPooler(nn.Module):
    """dense + tanh over the [CLS] position, as in BERT."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


def _return_dict(config: ReforBertConfig, return_dict: bool | None) -> bool:
    return config.return_dict if return_dict is None else return_dict


class ReforBertModel(ReforBertPreTrainedModel):
    """The encoder: returns ``last_hidden_state`` and ``pooler_output``.

    The attention backend is read from ``config.attention_backend`` on every call, so
    ``model.config.attention_backend = "lsh"`` switches a loaded model at run time.
    """

    def __init__(self, config: ReforBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = ReforBertEmbeddings(config)
        self.encoder = ReforBertEncoder(config)
        self.pooler = ReforBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _attention_context(
        self, key_is_real: torch.Tensor, dtype: torch.dtype, mask_given: bool
    ) -> AttentionContext:
        """The backend for this length, whether anything is padded and, for exact attention, the mask
        its kernel takes: built once per call and shared by all layers."""
        backend = resolve_backend(self.config, key_is_real.shape[1])
        # Without a mask nothing is padded, and nothing needs to be read back from the device. Under
        # torch.compile, reading it back would split the graph; the compiled LSH path ignores it anyway.
        has_padding = mask_given and (torch.compiler.is_compiling() or not bool(key_is_real.all()))
        context = AttentionContext(backend=backend, key_is_real=key_is_real, has_padding=has_padding)
        if backend != "full":
            return context
        dropout_p = self.config.attention_probs_dropout_prob if self.training else 0.0
        if ATTENTION_KERNELS["full"] == "flex" and key_is_real.device.type == "cuda" and dropout_p == 0.0:
            context.full_attention_block_mask = full_attention_block_mask(key_is_real)
        else:
            context.full_attention_bias = full_attention_bias(
                key_is_real, mask_dtype(key_is_real.device, dtype)
            )
        return context

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        hidden_states = self.embeddings(input_ids, token_type_ids)
        if attention_mask is None:
            key_is_real = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            key_is_real = attention_mask.to(device=input_ids.device).bool()
        context = self._attention_context(key_is_real, hidden_states.dtype, attention_mask is not None)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        sequence_output, all_states = self.encoder(hidden_states, context, output_hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        output = BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=all_states
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------


class ReforBertLMPredictionHead(nn.Module):
    """dense + activation + LayerNorm, then a decoder whose weight is the word-embedding matrix."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.activation(self.dense(hidden_states))))


@dataclass
class ReforBertForPreTrainingOutput(ModelOutput):
    """``prediction_logits`` is (batch, length, vocab) without labels and (n_masked, vocab) with labels:
    only the positions whose label is not IGNORE_INDEX (-100) are scored."""

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


_TIED_DECODER = {"lm_head.decoder.weight": "reforbert.embeddings.word_embeddings.weight"}


class _MaskedLMMixin:
    """Output-embedding accessors shared by the two models with a masked-LM head."""

    lm_head: ReforBertLMPredictionHead

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head.decoder = new_embeddings


class ReforBertForPreTraining(_MaskedLMMixin, ReforBertPreTrainedModel):
    """Masked language modelling + next-sentence prediction, as in BERT pretraining."""

    _tied_weights_keys = _TIED_DECODER

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__(config)
        self.reforbert = ReforBertModel(config)
        self.lm_head = ReforBertLMPredictionHead(config)
        self.nsp_head = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ReforBertForPreTrainingOutput | tuple:
        encoded = self.reforbert(
            input_ids, attention_mask, token_type_ids, output_hidden_states, return_dict=True
        )
        sequence_output = encoded.last_hidden_state
        seq_relationship_logits = self.nsp_head(encoded.pooler_output)
        mlm_loss = nsp_loss = loss = None
        if labels is None:
            prediction_logits = self.lm_head(sequence_output)
        else:
            # The vocabulary projection is the largest activation; score masked positions only.
            selected = labels != IGNORE_INDEX
            prediction_logits = self.lm_head(_rows_in_padded_count(sequence_output, selected))
            prediction_logits = prediction_logits[: int(selected.sum())]
            if prediction_logits.shape[0]:
                mlm_loss = F.cross_entropy(prediction_logits.float(), labels[selected])
            else:  # nothing masked: a zero that still belongs to the graph
                mlm_loss = prediction_logits.sum() * 0.0
            loss = mlm_loss
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(seq_relationship_logits.float(), next_sentence_label.view(-1))
            loss = nsp_loss if loss is None else loss + nsp_loss
        output = ReforBertForPreTrainingOutput(
            loss=loss,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            prediction_logits=prediction_logits,
            seq_relationship_logits=seq_relationship_logits,
            hidden_states=encoded.hidden_states,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class ReforBertForMaskedLM(_MaskedLMMixin, ReforBertPreTrainedModel):
    """Masked-LM head only; logits at every position (what ``pipeline("fill-mask")`` expects)."""

    _tied_weights_keys = _TIED_DECODER
    # A pretraining checkpoint also holds the pooler and the next-sentence head; this model needs neither.
    _keys_to_ignore_on_load_unexpected = [r"^reforbert\.pooler\.", r"^nsp_head\."]

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__(config)
        self.reforbert = ReforBertModel(config, add_pooling_layer=False)
        self.lm_head = ReforBertLMPredictionHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        encoded = self.reforbert(
            input_ids, attention_mask, token_type_ids, output_hidden_states, return_dict=True
        )
        logits = self.lm_head(encoded.last_hidden_state)
        loss = None
        if labels is not None:
            # The loss is cross-entropy over the labelled rows, which get a head call of their own: the
            # same value and gradients as cross-entropy with ignore_index over ``logits``, but backward
            # multiplies those rows only, and no (positions x vocabulary) log-softmax or gradient of
            # it is kept (at 8,192 positions 262 MB each). ``logits`` still covers every position.
            flat_labels = labels.reshape(-1)
            rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
            labelled_states = encoded.last_hidden_state.flatten(0, 1).index_select(0, rows)
            loss = F.cross_entropy(self.lm_head(labelled_states).float(), flat_labels.index_select(0, rows))
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class ReforBertForSequenceClassification(ReforBertPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear. ``num_labels == 1`` is regression (MSE), else cross-entropy
    (or BCE when ``config.problem_type == "multi_label_classification"``)."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.reforbert = ReforBertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        encoded = self.reforbert(
            input_ids, attention_mask, token_type_ids, output_hidden_states, return_dict=True
        )
        logits = self.classifier(self.dropout(encoded.pooler_output))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = MSELoss()(logits.float().squeeze(-1), labels.float().view(-1))
            elif self.config.problem_type == "multi_label_classification":
                loss = BCEWithLogitsLoss()(logits.float(), labels.float())
            else:
                loss = CrossEntropyLoss()(logits.float().view(-1, self.num_labels), labels.view(-1))
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class ReforBertForTokenClassification(ReforBertPreTrainedModel):
    """Per-token dropout -> linear; labels of IGNORE_INDEX (-100) are ignored (sub-word continuations,
    padding)."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.reforbert = ReforBertModel(config, add_pooling_layer=False)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput | tuple:
        encoded = self.reforbert(
            input_ids, attention_mask, token_type_ids, output_hidden_states, return_dict=True
        )
        logits = self.classifier(self.dropout(encoded.last_hidden_state))
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.float().view(-1, self.num_labels), labels.view(-1))
        output = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class ReforBertForQuestionAnswering(ReforBertPreTrainedModel):
    """Extractive QA: start and end logits per token. The loss averages the start and end
    cross-entropies; positions outside the sequence are clamped to an ignored index, as in BERT."""

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__(config)
        self.reforbert = ReforBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput | tuple:
        encoded = self.reforbert(
            input_ids, attention_mask, token_type_ids, output_hidden_states, return_dict=True
        )
        start_logits, end_logits = self.qa_outputs(encoded.last_hidden_state).unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored_index = start_logits.shape[1]
            start_positions = start_positions.view(-1).clamp(0, ignored_index)
            end_positions = end_positions.view(-1).clamp(0, ignored_index)
            loss_fn = CrossEntropyLoss(ignore_index=ignored_index)
            start_loss = loss_fn(start_logits.float(), start_positions)
            loss = (start_loss + loss_fn(end_logits.float(), end_positions)) / 2
        output = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            hidden_states=encoded.hidden_states,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


# ----------------------------------------------------------------------------------------------------
# Performance devices for CPU training. None of them changes what the model computes; each says why it
# is here and what it measured.
# ----------------------------------------------------------------------------------------------------

# 1. Dropout mask from 16-bit lanes. The mask is cut from 16-bit lanes of 64-bit random words: one
# generator call yields four keep/drop decisions, where ``torch.bernoulli_`` makes one call per element.
# Measured on a 2-core Xeon: the native op took about a quarter of a bf16 ``mini`` training step; this
# mask costs about half as much. The drop rate is ``p`` rounded to a multiple of 1/65536 and the kept
# values are rescaled by the rounded rate, so expectations are exact.
_LANE_VALUES = 1 << 16


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, p: float) -> torch.Tensor:
        dropped_lanes = round(p * _LANE_VALUES)
        count = inputs.numel()
        words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        lanes = words.view(torch.int16)[:count].view(inputs.shape)  # uniform over [-32768, 32767]
        keep = lanes >= dropped_lanes - _LANE_VALUES // 2
        ctx.scale = _LANE_VALUES / (_LANE_VALUES - dropped_lanes)
        ctx.save_for_backward(keep)
        return torch.where(keep, inputs * ctx.scale, 0.0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad_output * ctx.scale, 0.0), None


def dropout(inputs: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` with the cheaper mask on CPU; on accelerators the native fused kernel is used."""
    if not training or p == 0.0:
        return inputs
    if inputs.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(inputs, p=p, training=True)
    return _CpuDropout.apply(inputs, p)


class Dropout(nn.Module):
    """Module form of :func:`dropout`, used wherever BERT has ``nn.Dropout``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return dropout(inputs, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# 2. Masked rows padded to 64. The number of masked tokens changes with every batch. On CPU, oneDNN builds
# (and caches) a kernel for each matrix shape it meets, which under bf16 autocast cost the training loop
# 12-23% over a loop that replayed the same batches; scoring a row count rounded up to this multiple
# keeps the shapes few.
MASKED_ROWS_MULTIPLE = 64


def _rows_in_padded_count(hidden_states: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The rows of ``hidden_states`` (batch, length, hidden) where ``selected`` is True, followed by
    copies of the first row up to a multiple of MASKED_ROWS_MULTIPLE; callers drop the extra rows."""
    positions = selected.flatten().nonzero().squeeze(1)
    extra = -positions.numel() % MASKED_ROWS_MULTIPLE
    positions = F.pad(positions, (0, extra))
    return hidden_states.flatten(0, 1)[positions]


# 3. Autocast dtype detection. The dense mask of exact attention is built once per call in the dtype the
# kernels will see, instead of being converted in every layer; this gain was not measured on its own.
def mask_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The autocast dtype of ``device`` when autocast is on there, else ``dtype``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


__all__ = [
    "ReforBertForMaskedLM",
    "ReforBertForPreTraining",
    "ReforBertForQuestionAnswering",
    "ReforBertForSequenceClassification",
    "ReforBertForTokenClassification",
    "ReforBertModel",
    "ReforBertPreTrainedModel",
]
