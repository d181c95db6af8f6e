"""The fused attention kernels against the reference implementation they replace.

The reference (plain PyTorch, every intermediate materialised) is the oracle: the chunked LSH kernel and
the FlexAttention form of exact attention must give the same outputs and gradients, in float32, for the
same hash buckets.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_modeling import one_thread, random_ids  # noqa: F401 - one_thread is an autouse fixture
from test_modeling import tiny_config as modeling_tiny_config

import reforbert.modeling_reforbert as modeling
from reforbert import ReforBertConfig, ReforBertForPreTraining, ReforBertModel


def tiny_config(**overrides) -> ReforBertConfig:
    """test_modeling's tiny model with LSH attention and positions for up to 4,096 tokens."""
    return modeling_tiny_config(**{"axial_position_shape": (64, 64), "attention_backend": "lsh", **overrides})


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, tolerance: float = 1e-5) -> None:
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= tolerance * max(1.0, scale), f"{what}: max error {error:.3g} at scale {scale:.3g}"


# ---------------------------------------------------------------------------------------------------
# LSH: chunked kernel against the reference, given the same sort order
# ---------------------------------------------------------------------------------------------------


def _lsh_inputs(batch, heads, length, head_dim, rounds, bucket_size, real_lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    queries = 3 * torch.randn(batch, heads, length, head_dim, generator=generator)
    keys = F.normalize(queries, dim=-1)
    values = torch.randn(batch, heads, length, head_dim, generator=generator)
    key_is_real = torch.arange(length) < torch.tensor(real_lengths).unsqueeze(1)
    rotations = torch.randn(heads, head_dim, rounds, length // bucket_size, generator=generator)
    order = modeling.lsh_sort_order(queries, key_is_real, rotations)
    return queries, keys, values, key_is_real, order


@pytest.mark.parametrize(
    ("batch", "heads", "length", "rounds", "bucket_size", "real_lengths"),
    [
        (1, 1, 8, 1, 8, [8]),  # one chunk: it attends to itself only
        (1, 2, 16, 2, 8, [16]),  # two chunks: the neighbour once, not twice
        (2, 2, 48, 3, 8, [48, 30]),  # padding in the second sequence
        (2, 3, 64, 2, 16, [1, 64]),  # a lone real token
        (1, 2, 96, 4, 8, [70]),  # many chunks, rounds spread over several slices
    ],
)
def test_chunked_lsh_kernel_equals_the_reference_in_outputs_and_gradients(
    monkeypatch, batch, heads, length, rounds, bucket_size, real_lengths
):
    # Small slices, so that one call runs several and the slice boundaries are exercised.
    monkeypatch.setattr(modeling, "LSH_SCORES_PER_SLICE", 3 * bucket_size**2 * 8)
    queries, keys, values, key_is_real, order = _lsh_inputs(
        batch, heads, length, 8, rounds, bucket_size, real_lengths
    )
    chunked = _kernel_results("chunked", (queries, keys, values), key_is_real, order, bucket_size)
    reference = _kernel_results("reference", (queries, keys, values), key_is_real, order, bucket_size)
    for name, actual, expected in zip(KERNEL_RESULT_NAMES, chunked, reference, strict=True):
        assert_close(actual, expected, name)


def test_chunked_lsh_kernel_in_bfloat16_stays_close_to_the_float32_reference(monkeypatch):
    """Under bf16 autocast the kernel gets bf16 queries, keys and values: its products are then taken in
    bf16 and added into float32 totals, a branch of its own."""
    bucket_size = 8
    monkeypatch.setattr(modeling, "LSH_SCORES_PER_SLICE", 3 * bucket_size**2 * 8)
    queries, keys, values, key_is_real, order = _lsh_inputs(2, 2, 48, 8, 3, bucket_size, [48, 30])
    low = tuple(t.to(torch.bfloat16) for t in (queries, keys, values))
    chunked = _kernel_results("chunked", low, key_is_real, order, bucket_size)
    reference = _kernel_results("reference", tuple(t.float() for t in low), key_is_real, order, bucket_size)
    for name, actual, expected in zip(KERNEL_RESULT_NAMES, chunked, reference, strict=True):
        assert actual.dtype == (torch.float32 if name == "log-sum-exps" else torch.bfloat16), name
        assert_close(actual.float(), expected, name, tolerance=3e-2)


KERNEL_RESULT_NAMES = ("outputs", "log-sum-exps", "query gradients", "key gradients", "value gradients")


def _kernel_results(kernel, tensors, key_is_real, order, bucket_size) -> tuple[torch.Tensor, ...]:
    """Outputs, log-sum-exps and the gradients of (queries, keys, values) of one chunk-attention kernel,
    backpropagating fixed random weights of the outputs and the log-sum-exps."""
    batch, heads, rounds, length = order.shape
    generator = torch.Generator().manual_seed(1)
    grad_outputs = torch.randn(batch, heads, rounds, length, tensors[0].shape[-1], generator=generator)
    grad_log_normalisers = torch.randn(batch, heads, rounds, length, generator=generator)
    inputs = [t.clone().requires_grad_() for t in tensors]
    if kernel == "reference":
        outputs, log_normalisers = modeling.lsh_chunk_attention_reference(
            *inputs, key_is_real, order, bucket_size, 0.0, False
        )
    else:
        outputs, log_normalisers = modeling.LshChunkAttention.apply(*inputs, key_is_real, order, bucket_size)
    weighted = (outputs.float() * grad_outputs).sum() + (log_normalisers * grad_log_normalisers).sum()
    weighted.backward()
    return tuple(t.detach() for t in (outputs, log_normalisers, *(t.grad for t in inputs)))


def test_chunked_lsh_kernel_keeps_no_scores_for_backward():
    """Autograd state of the chunked kernel is linear in the length: its inputs, outputs and two numbers
    per row (maximum score, log of the sum of exponentials), nothing of the (length x 3 x chunk) scores
    the reference keeps."""
    batch, heads, length, head_dim, rounds, bucket_size = 1, 2, 256, 4, 2, 32
    queries, keys, values, key_is_real, order = _lsh_inputs(
        batch, heads, length, head_dim, rounds, bucket_size, [length]
    )
    inputs = [t.requires_grad_() for t in (queries, keys, values)]

    def saved_elements(kernel) -> int:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            kernel()
        return sum(saved)

    chunked = saved_elements(
        lambda: modeling.LshChunkAttention.apply(*inputs, key_is_real, order, bucket_size)
    )
    reference = saved_elements(
        lambda: modeling.lsh_chunk_attention_reference(*inputs, key_is_real, order, bucket_size, 0.0, False)
    )
    linear = batch * heads * length * (3 * head_dim + rounds * (head_dim + 2))
    assert chunked <= linear
    assert reference > 3 * bucket_size * batch * heads * rounds * length  # one score per key in the window


def test_round_mixing_is_the_same_with_and_without_autograd():
    """mix_rounds takes a running sum where nothing needs gradients and the product form otherwise."""
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(2, 3, 4, 50, 8, generator=generator)
    log_normalisers = 3 * torch.randn(2, 3, 4, 50, generator=generator)
    with torch.no_grad():
        running_sum = modeling.mix_rounds(outputs, log_normalisers)
    product = modeling.mix_rounds(outputs.requires_grad_(), log_normalisers)
    assert product.requires_grad
    weights = torch.softmax(log_normalisers, dim=2)
    expected = torch.einsum("bhrld,bhrl->bhld", outputs.detach(), weights)
    assert_close(running_sum, expected, "running sum")
    assert_close(product.detach(), expected, "product form")


# ---------------------------------------------------------------------------------------------------
# LSH: hashing
# ---------------------------------------------------------------------------------------------------


def test_factorised_hashing_combines_one_winner_per_factor():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(2, 3, 50, 8, generator=generator)
    factors = (3, 5)
    rotations = torch.randn(3, 8, 2, sum(factors), generator=generator)
    rotated = torch.einsum("bhld,hdrk->bhrlk", vectors, rotations)
    low, high = rotated.split(factors, dim=-1)
    low_digit = torch.cat([low, -low], dim=-1).argmax(dim=-1)
    high_digit = torch.cat([high, -high], dim=-1).argmax(dim=-1)
    expected = low_digit + 2 * factors[0] * high_digit
    buckets = modeling.hash_to_buckets(vectors, rotations, factors)
    assert torch.equal(buckets, expected)
    assert buckets.min() >= 0 and buckets.max() < 4 * factors[0] * factors[1]


@pytest.mark.parametrize("n_chunks", [1, 2, 31, 32, 33, 100, 1024, 4096])
def test_about_two_buckets_per_chunk_with_hashing_cost_below_linear(n_chunks):
    factors = modeling.rotation_factors(n_chunks)
    n_buckets = math.prod(2 * columns for columns in factors)
    assert 2 * n_chunks <= n_buckets <= 2.5 * n_chunks
    if n_chunks <= modeling.SINGLE_ROTATION_MAX_CHUNKS:
        assert factors == (n_chunks,)  # the paper's hash, unchanged for short sequences
    else:
        assert sum(factors) <= 2 * math.sqrt(n_chunks)


# ---------------------------------------------------------------------------------------------------
# LSH: the whole model with either kernel
# ---------------------------------------------------------------------------------------------------


def _use_lsh_kernel(monkeypatch, kernel: str) -> None:
    monkeypatch.setitem(modeling.ATTENTION_KERNELS, "lsh", kernel)


def _loss_and_gradients(model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(1234)  # same dropout masks and rotations for every run
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reversible", [True, False])
def test_model_trains_the_same_with_the_chunked_kernel(monkeypatch, reversible):
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=3, reversible=reversible, hidden_dropout_prob=0.2)
    model = ReforBertForPreTraining(config).train()
    input_ids = random_ids(2, 45)
    labels = torch.where(torch.rand(input_ids.shape) < 0.3, input_ids, torch.full_like(input_ids, -100))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 29:] = 0
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    inputs["next_sentence_label"] = torch.tensor([0, 1])
    results = {}
    for kernel in ("reference", "chunked"):
        _use_lsh_kernel(monkeypatch, kernel)
        results[kernel] = _loss_and_gradients(model, inputs)
    (reference_loss, reference_grads), (chunked_loss, chunked_grads) = (
        results["reference"],
        results["chunked"],
    )
    assert chunked_loss.item() == pytest.approx(reference_loss.item(), abs=1e-6)
    assert chunked_grads.keys() == reference_grads.keys()
    for name, reference in reference_grads.items():
        assert_close(chunked_grads[name], reference, name)


@pytest.mark.parametrize("length", [1, 2, 31, 32, 33, 96, 1023, 1056, 1999, 2000])
def test_model_outputs_agree_between_kernels_at_any_length(monkeypatch, length):
    # Buckets of 32: from 1 chunk up to 63, past the point where hashing is factorised.
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config(lsh_bucket_size=32, num_hidden_layers=1)).eval()
    input_ids = random_ids(1, length)
    outputs = {}
    for kernel in ("reference", "chunked"):
        _use_lsh_kernel(monkeypatch, kernel)
        with torch.no_grad():
            outputs[kernel] = model(input_ids).last_hidden_state
    assert_close(outputs["chunked"], outputs["reference"], f"length {length}")


def test_eval_mode_is_a_deterministic_function_of_the_weights():
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config()).eval()
    input_ids = random_ids(2, 200)  # 25 chunks of 8: LSH differs from exact attention here
    with torch.no_grad():
        first = model(input_ids).last_hidden_state
        torch.manual_seed(99)  # the global generator plays no part in eval
        second = model(input_ids).last_hidden_state
    assert torch.equal(first, second)
    model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        trained_hashes = model(input_ids).last_hidden_state
    assert not torch.allclose(first, trained_hashes, atol=1e-4)  # training draws fresh rotations


# ---------------------------------------------------------------------------------------------------
# Exact attention: FlexAttention form against the dense-mask reference
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "real_lengths"),
    [(37, [37, 37]), (37, [37, 20]), (37, [1, 37]), (300, [300, 140]), (300, [256, 3])],
)
def test_flex_exact_attention_equals_the_dense_mask_reference(length, real_lengths):
    # FlexAttention's backward needs a GPU; on CPU its forward runs uncompiled, which checks the
    # self-penalty, the block mask (blocks of 128 keys: skipped, full or partial) and the padding rule
    # that the CUDA kernel is compiled from.
    generator = torch.Generator().manual_seed(0)
    queries = 3 * torch.randn(2, 2, length, 8, generator=generator)
    keys = F.normalize(queries, dim=-1)
    values = torch.randn(2, 2, length, 8, generator=generator)
    key_is_real = torch.arange(length) < torch.tensor(real_lengths).unsqueeze(1)
    bias = modeling.full_attention_bias(key_is_real, torch.float32)
    expected = modeling.full_attention(queries, keys, values, bias, dropout_p=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile"
        block_mask = modeling.full_attention_block_mask(key_is_real)
        actual = modeling.flex_full_attention(queries, keys, values, block_mask, compiled=False)
    assert_close(actual, expected, "flex attention")
    # The uncompiled kernel applies the padding rule everywhere; the compiled one trusts the block
    # classification, so check that it gives the same keys: full blocks unmasked, partial ones by rule.
    block = modeling.FLEX_BLOCK_SIZE
    padded_length = block * -(-length // block)
    real = F.pad(key_is_real, (0, padded_length - length))
    seen = torch.zeros_like(real)
    for sequence in range(2):
        full_blocks = block_mask.full_kv_indices[
            sequence, 0, 0, : block_mask.full_kv_num_blocks[sequence, 0, 0]
        ]
        partial_blocks = block_mask.kv_indices[sequence, 0, 0, : block_mask.kv_num_blocks[sequence, 0, 0]]
        for index in full_blocks.tolist():
            seen[sequence, index * block : (index + 1) * block] = True
        for index in partial_blocks.tolist():
            keys_of_block = slice(index * block, (index + 1) * block)
            seen[sequence, keys_of_block] = real[sequence, keys_of_block]
    assert torch.equal(seen, real)
    if real_lengths[0] == 1:  # a lone real token attends to itself, from every position
        assert_close(actual[0], values[0, :, :1].expand(-1, length, -1), "lone token")


def test_whether_anything_is_padded_is_decided_once_per_pass_from_the_mask():
    model = ReforBertModel(tiny_config())
    everything_real = torch.ones(2, 40, dtype=torch.bool)
    partly_padded = everything_real.clone()
    partly_padded[1, 30:] = False
    cases = [(everything_real, False, False), (everything_real, True, False), (partly_padded, True, True)]
    for key_is_real, mask_given, expected in cases:
        context = model._attention_context(key_is_real, torch.float32, mask_given)
        assert context.has_padding is expected, (mask_given, key_is_real.all())
