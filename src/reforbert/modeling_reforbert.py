"""ReforBERT: a BERT whose encoder is a Reformer.

The encoder follows "Reformer: The Efficient Transformer" (Kitaev, Kaiser and Levskaya, ICLR 2020):
axial position embeddings, attention with one shared query/key projection, locality-sensitive-hashing
(LSH) attention, reversible residual layers (Gomez et al. 2017, "The Reversible Residual Network") and
chunked feed-forward layers. The heads and the pretraining objective (masked language modelling plus
next-sentence prediction) follow "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (Devlin et al., NAACL 2019). Unlike the Reformer language model, every token sees the whole
sequence: LSH chunks look at their neighbours on both sides.

Reading order: embeddings -> attention (shared QK, exact and LSH backends) -> feed-forward -> reversible
layer and the autograd function that recomputes activations -> encoder -> pretrained-model base -> heads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
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

from reforbert.configuration_reforbert import ReforBertConfig

# Additive score penalties. A token may attend to itself only when no other key exists, so its self-score
# is pushed down by a large but finite amount; padding keys are pushed down much further, so a lone real
# token prefers itself over padding and every row of scores keeps a finite maximum.
SELF_PENALTY = -1e5
PADDING_PENALTY = -1e9
# Eval-mode LSH rotations are drawn from a generator seeded with this plus the layer index, so that a
# model in eval mode is a deterministic function of its weights.
EVAL_HASH_SEED = 4242


# ----------------------------------------------------------------------------------------------------
# Dropout that is cheap on CPU
# ----------------------------------------------------------------------------------------------------

# A CPU dropout mask is cut from 16-bit lanes of 64-bit random words: one generator call yields four
# keep/drop decisions, where ``torch.bernoulli_`` makes one call per element. On a 2-core Xeon the native
# op took about a quarter of a bf16 ``mini`` training step; this mask costs about half as much.
# The drop rate is ``p`` rounded to a multiple of 1/65536 and the kept values are rescaled by the
# rounded rate, so expectations are exact.
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


# ----------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------


class AxialPositionEmbeddings(nn.Module):
    """Position p = (p // n2, p % n2) embedded as [row(p // n2), column(p % n2)], each half of hidden.

    Only the rows for the positions asked for are gathered, so the full n1 x n2 table never exists.
    """

    def __init__(self, config: ReforBertConfig) -> None:
        super().__init__()
        rows, columns = config.axial_position_shape
        self.columns = columns
        self.max_positions = rows * columns
        self.row_embeddings = nn.Embedding(rows, config.hidden_size // 2)
        self.column_embeddings = nn.Embedding(columns, config.hidden_size // 2)

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        if length > self.max_positions:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings {self.max_positions} "
                f"(axial_position_shape {self.row_embeddings.num_embeddings} x {self.columns})"
            )
        positions = torch.arange(length, device=device)
        rows = self.row_embeddings(positions // self.columns)
        columns = self.column_embeddings(positions % self.columns)
        return torch.cat([rows, columns], dim=-1)  # (length, hidden)


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
            + self.position_embeddings(length, input_ids.device)
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
    full_attention_bias: torch.Tensor | None  # (batch, 1, length, length) additive, only for "full"


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
    """Exact attention over (batch, heads, length, head_dim) tensors; keys are already unit length."""
    return F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=bias.to(queries.dtype), dropout_p=dropout_p
    )


def _gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (b, h, L, d) and index (b, h, r, L') -> (b, h, r, L', d): rows picked per hashing round."""
    rounds = index.shape[2]
    expanded = tensor.unsqueeze(2).expand(-1, -1, rounds, -1, -1)
    return expanded.gather(3, index.unsqueeze(-1).expand(-1, -1, -1, -1, tensor.shape[-1]))


def _look_around_offsets(n_chunks: int) -> list[int]:
    """Which chunks chunk i attends to, relative to i. Bidirectional: i-1, i and i+1 (cyclically).
    With two chunks that would count the other chunk twice, with one chunk itself three times, so
    those cases list each chunk once."""
    return [0] if n_chunks == 1 else [0, 1] if n_chunks == 2 else [-1, 0, 1]


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
    offsets = _look_around_offsets(n_chunks)
    bias = torch.zeros(bucket_size, len(offsets) * bucket_size, device=device)
    own = offsets.index(0) * bucket_size
    bias[:, own : own + bucket_size].fill_diagonal_(SELF_PENALTY)
    return bias


# Positions hashed at a time. The rotated vectors are (positions x buckets) per head and round, and the
# number of buckets grows with the length, so hashing everything at once would need memory quadratic in
# the length (8 GiB at 65,536 tokens); in slices it stays at a few hundred MB.
HASH_SLICE = 4096


def hash_to_buckets(vectors: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Angular LSH: bucket = argmax over [xR, -xR] (the sign trick doubles the buckets for free).

    (batch, heads, length, head_dim) and (heads, head_dim, rounds, n_buckets // 2) ->
    (batch, heads, rounds, length) bucket ids, chosen in full precision.
    """
    half = rotations.shape[-1]
    slices = []
    with torch.autocast(vectors.device.type, enabled=False):
        for start in range(0, vectors.shape[2], HASH_SLICE):
            part = vectors[:, :, start : start + HASH_SLICE].float()
            rotated = torch.einsum("bhld,hdrk->bhrlk", part, rotations.float())
            top, top_index = rotated.max(dim=-1)
            bottom, bottom_index = rotated.min(dim=-1)
            # -min(xR) is max(-xR): the bucket lies in the negated half when it beats the best positive.
            slices.append(torch.where(-bottom > top, bottom_index + half, top_index))
    return torch.cat(slices, dim=-1)


def lsh_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_is_real: torch.Tensor,
    rotations: torch.Tensor,
    bucket_size: int,
    dropout_p: float,
    training: bool,
) -> torch.Tensor:
    """Multi-round LSH attention (Reformer, section 2) over (batch, heads, length, head_dim) tensors.

    The length must already be a multiple of ``bucket_size`` and ``rotations`` is
    (heads, head_dim, rounds, n_buckets // 2). Each round hashes the shared query/key vectors to buckets,
    sorts positions by (bucket, position), cuts the order into chunks of ``bucket_size`` and lets each
    chunk attend to itself and its neighbours. Rounds are mixed by the softmax of their log-sum-exps,
    which is exact attention over the union of keys when the rounds agree.
    """
    batch, heads, length, head_dim = queries.shape
    rounds = rotations.shape[2]
    n_chunks = length // bucket_size
    n_buckets = 2 * rotations.shape[3]

    buckets = hash_to_buckets(queries, rotations)
    # Padding goes to an extra last bucket, so it never displaces real tokens from their chunks.
    buckets = buckets.masked_fill(~key_is_real[:, None, None, :], n_buckets)
    positions = torch.arange(length, device=queries.device)
    order = (buckets * length + positions).argsort(dim=-1)  # sort by bucket, then position

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
    probabilities = torch.exp(scores - log_normaliser)
    probabilities = dropout(probabilities, dropout_p, training)
    sorted_output = torch.matmul(probabilities.to(sorted_values.dtype), sorted_values)

    # Undo the sort: the inverse permutation of each round puts every row back at its position.
    undo = torch.empty_like(order).scatter_(-1, order, positions.expand_as(order))
    output = sorted_output.reshape(batch, heads, rounds, length, head_dim)
    output = output.gather(3, undo.unsqueeze(-1).expand(-1, -1, -1, -1, head_dim))
    log_normaliser = log_normaliser.reshape(batch, heads, rounds, length).gather(3, undo)
    round_weights = torch.softmax(log_normaliser, dim=2).unsqueeze(-1)  # (b, h, rounds, length, 1)
    return (output.float() * round_weights).sum(dim=2).to(values.dtype)


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

    def _rotations(self, n_buckets: int, device: torch.device) -> torch.Tensor:
        shape = (self.num_heads, self.head_dim, self.config.lsh_num_hashes, n_buckets // 2)
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
        if context.backend == "full":
            output = full_attention(queries, keys, values, context.full_attention_bias, dropout_p)
        else:
            output = self._lsh(queries, keys, values, context.key_is_real, dropout_p)
        return output.transpose(1, 2).reshape(batch, length, hidden)

    def _lsh(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_is_real: torch.Tensor,
        dropout_p: float,
    ) -> torch.Tensor:
        bucket_size = self.config.lsh_bucket_size
        length = queries.shape[2]
        padded_length = max(1, math.ceil(length / bucket_size)) * bucket_size
        extra = padded_length - length
        if extra:
            queries, keys, values = (F.pad(t, (0, 0, 0, extra)) for t in (queries, keys, values))
            key_is_real = F.pad(key_is_real, (0, extra), value=False)
        # Two buckets per chunk on average (Reformer, section 2); at least one rotation direction.
        n_buckets = 2 * (padded_length // bucket_size)
        rotations = self._rotations(n_buckets, queries.device)
        output = lsh_attention(
            queries, keys, values, key_is_real, rotations, bucket_size, dropout_p, self.training
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
            device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
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
        backend = resolve_backend(self.config, input_ids.shape[1])
        bias = None
        if backend == "full":
            # Built once per call and shared by all layers; in the autocast dtype when one is active.
            dtype = hidden_states.dtype
            if torch.is_autocast_enabled(input_ids.device.type):
                dtype = torch.get_autocast_dtype(input_ids.device.type)
            bias = full_attention_bias(key_is_real, dtype)
        context = AttentionContext(backend=backend, key_is_real=key_is_real, full_attention_bias=bias)
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
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
    only the positions whose label is not -100 are scored."""

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


# The number of masked tokens changes with every batch. On CPU, oneDNN builds (and caches) a kernel for
# each matrix shape it meets, which under bf16 autocast cost the training loop 12-23% over a loop that
# replayed the same batches; scoring a row count rounded up to this multiple keeps the shapes few.
MASKED_ROWS_MULTIPLE = 64


def _rows_in_padded_count(hidden_states: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The rows of ``hidden_states`` (batch, length, hidden) where ``selected`` is True, followed by
    copies of the first row up to a multiple of MASKED_ROWS_MULTIPLE; callers drop the extra rows."""
    positions = selected.flatten().nonzero().squeeze(1)
    extra = -positions.numel() % MASKED_ROWS_MULTIPLE
    positions = F.pad(positions, (0, extra))
    return hidden_states.flatten(0, 1)[positions]


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
            selected = labels != -100
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
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
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
    """Per-token dropout -> linear; labels of -100 are ignored (sub-word continuations, padding)."""

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


__all__ = [
    "ReforBertForMaskedLM",
    "ReforBertForPreTraining",
    "ReforBertForQuestionAnswering",
    "ReforBertForSequenceClassification",
    "ReforBertForTokenClassification",
    "ReforBertModel",
    "ReforBertPreTrainedModel",
]
