"""Behaviour of the ReforBERT model: both attention backends, reversible layers, heads, saving, pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedTokenizerFast,
    pipeline,
)

import reforbert.modeling_reforbert as modeling
from reforbert import (
    SPECIAL_TOKENS,
    ReforBertConfig,
    ReforBertForMaskedLM,
    ReforBertForPreTraining,
    ReforBertForQuestionAnswering,
    ReforBertForSequenceClassification,
    ReforBertForTokenClassification,
    ReforBertModel,
)
from reforbert.configuration_reforbert import IGNORE_INDEX
from reforbert.data.vocab import wrap_as_bert_tokenizer

VOCAB = 40


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: one thread is faster than a contended thread pool, and the results do not change.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides) -> ReforBertConfig:
    sizes = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        lsh_bucket_size=8,
        lsh_num_hashes=2,
        axial_position_shape=(16, 16),
    )
    sizes.update(overrides)
    return ReforBertConfig(**sizes)


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIAL_TOKENS), VOCAB, (batch, length), generator=generator)


def encode(model: ReforBertModel, backend: str, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    model.config.attention_backend = backend
    with torch.no_grad():
        return model(input_ids, **kwargs).last_hidden_state


# ---------------------------------------------------------------------------------------------------
# Attention backends
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_hashes", [1, 3])
def test_lsh_equals_full_attention_when_one_bucket_spans_the_sequence(num_hashes):
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config(lsh_bucket_size=32, lsh_num_hashes=num_hashes)).eval()
    input_ids = random_ids(2, 27)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 19:] = 0
    full = encode(model, "full", input_ids, attention_mask=attention_mask)
    lsh = encode(model, "lsh", input_ids, attention_mask=attention_mask)
    assert (full - lsh).abs().max().item() <= 1e-5


def test_lsh_error_against_full_attention_falls_with_more_hashes():
    batch, heads, length, head_dim, bucket_size = 2, 4, 128, 16, 16  # 8 chunks of 16
    key_is_real = torch.ones(batch, length, dtype=torch.bool)
    bias = modeling.full_attention_bias(key_is_real, torch.float32)
    mean_errors = []
    for num_hashes in (1, 2, 4, 8):
        errors = []
        for trial in range(6):
            generator = torch.Generator().manual_seed(trial)
            queries = torch.randn(batch, heads, length, head_dim, generator=generator)
            values = torch.randn(batch, heads, length, head_dim, generator=generator)
            keys = torch.nn.functional.normalize(queries, dim=-1)
            rotations = torch.randn(heads, head_dim, num_hashes, length // bucket_size, generator=generator)
            exact = modeling.full_attention(queries, keys, values, bias, dropout_p=0.0)
            approximate = modeling.lsh_attention(
                queries, keys, values, key_is_real, rotations, bucket_size, dropout_p=0.0, training=False
            )
            errors.append((approximate - exact).abs().mean().item())
        mean_errors.append(sum(errors) / len(errors))
    pairs = zip(mean_errors, mean_errors[1:], strict=False)
    assert all(later < earlier for earlier, later in pairs), mean_errors


@pytest.mark.parametrize("backend", ["full", "lsh"])
def test_attention_is_bidirectional(backend):
    # 24 tokens in chunks of 8: three chunks, each seeing all three, so LSH reaches every position.
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config()).eval()
    input_ids = random_ids(1, 24)
    changed = input_ids.clone()
    changed[0, -1] = (input_ids[0, -1] + 1 - len(SPECIAL_TOKENS)) % (VOCAB - len(SPECIAL_TOKENS)) + len(
        SPECIAL_TOKENS
    )
    before = encode(model, backend, input_ids)
    after = encode(model, backend, changed)
    assert (before[0, 0] - after[0, 0]).abs().max().item() > 1e-4


@pytest.mark.parametrize(("backend", "real", "padded"), [("full", 19, 31), ("lsh", 35, 40), ("lsh", 17, 24)])
def test_appended_padding_leaves_real_tokens_unchanged(backend, real, padded):
    # For LSH the padding stays within the last bucket-size multiple, so the hash buckets are the same;
    # padding is hashed to its own last bucket and masked, so it must not move or touch real tokens.
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config()).eval()
    input_ids = random_ids(1, real)
    padded_ids = torch.cat([input_ids, torch.zeros(1, padded - real, dtype=torch.long)], dim=1)
    mask = (torch.arange(padded) < real).long().unsqueeze(0)
    alone = encode(model, backend, input_ids)
    with_padding = encode(model, backend, padded_ids, attention_mask=mask)
    assert (alone - with_padding[:, :real]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", ["full", "lsh"])
def test_a_lone_real_token_gets_finite_outputs(backend):
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config()).eval()
    assert torch.isfinite(encode(model, backend, random_ids(1, 1))).all()
    mask = torch.zeros(1, 12, dtype=torch.long)
    mask[0, 0] = 1
    assert torch.isfinite(encode(model, backend, random_ids(1, 12), attention_mask=mask)).all()


def test_auto_backend_switches_on_length_and_config_is_read_per_call():
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config(full_attention_max_length=16)).eval()
    short, long = random_ids(1, 16), random_ids(1, 40)
    assert torch.equal(encode(model, "auto", short), encode(model, "full", short))
    assert torch.equal(encode(model, "auto", long), encode(model, "lsh", long))
    assert not torch.allclose(encode(model, "full", long), encode(model, "lsh", long), atol=1e-4)


@pytest.mark.slow
def test_every_length_up_to_2000_runs_in_lsh_mode_and_both_kernels_agree(monkeypatch):
    config = tiny_config(
        hidden_size=8,
        num_attention_heads=1,
        intermediate_size=8,
        num_hidden_layers=1,
        lsh_bucket_size=32,
        lsh_num_hashes=1,
        attention_backend="lsh",
        axial_position_shape=(64, 64),
    )
    model = ReforBertModel(config).eval()
    with torch.no_grad():
        for length in range(1, 2001):
            input_ids = random_ids(1, length, seed=length)
            monkeypatch.setitem(modeling.ATTENTION_KERNELS, "lsh", "reference")
            reference = model(input_ids).last_hidden_state
            monkeypatch.setitem(modeling.ATTENTION_KERNELS, "lsh", "chunked")
            chunked = model(input_ids).last_hidden_state
            assert chunked.shape == (1, length, 8), length
            assert (chunked - reference).abs().max().item() <= 1e-5, length


@pytest.mark.parametrize("length", [1, 5, 16, 17, 40, 256])
def test_axial_position_p_is_row_p_div_columns_beside_column_p_mod_columns(length):
    torch.manual_seed(0)
    axial = modeling.AxialPositionEmbeddings(tiny_config(axial_position_shape=(16, 16)))
    positions = torch.arange(length)
    expected = torch.cat(
        [axial.row_embeddings(positions // 16), axial.column_embeddings(positions % 16)], dim=-1
    )
    assert torch.equal(axial(length), expected)


def test_a_sequence_longer_than_the_position_table_is_refused():
    model = ReforBertModel(tiny_config(axial_position_shape=(4, 4))).eval()
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 16"):
        model(random_ids(1, 17))


# ---------------------------------------------------------------------------------------------------
# Reversible layers and chunked feed-forward
# ---------------------------------------------------------------------------------------------------


def _loss_and_grads(
    model: ReforBertForPreTraining, reversible: bool, inputs: dict
) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss, parameter gradients and the number of elements autograd saved for backward."""
    model.config.reversible = reversible
    model.zero_grad()
    saved: list[int] = []
    torch.manual_seed(1234)  # same dropout masks and LSH rotations for both runs
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = model(**inputs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, sum(saved)


@pytest.mark.parametrize("attention_dropout", [0.0, 0.2])  # 0 runs the chunked LSH kernel
@pytest.mark.parametrize("backend", ["lsh", "full"])
def test_reversible_gradients_equal_ordinary_backprop_with_dropout(backend, attention_dropout):
    torch.manual_seed(0)
    config = tiny_config(
        num_hidden_layers=3,
        attention_backend=backend,
        hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=attention_dropout,
    )
    model = ReforBertForPreTraining(config).train()
    input_ids = random_ids(2, 30)
    labels = torch.where(torch.rand(input_ids.shape) < 0.3, input_ids, torch.full_like(input_ids, -100))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 25:] = 0
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    inputs["next_sentence_label"] = torch.tensor([0, 1])
    plain_loss, plain_grads, plain_saved = _loss_and_grads(model, False, inputs)
    reversible_loss, reversible_grads, reversible_saved = _loss_and_grads(model, True, inputs)

    assert reversible_saved < plain_saved / 2  # the reversible run really kept fewer activations
    assert reversible_loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain_grads.keys() == reversible_grads.keys()
    assert len(plain_grads) == sum(1 for _ in model.parameters())
    for name, plain in plain_grads.items():
        error = (reversible_grads[name] - plain).norm() / plain.norm().clamp_min(1e-12)
        assert error.item() <= 1e-4, name
    # A different seed gives different dropout and hashes, so the replay above was not vacuous.
    model.config.reversible = True
    torch.manual_seed(99)
    assert model(**inputs).loss.item() != pytest.approx(plain_loss, abs=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_at_the_requested_rate_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    inputs = torch.ones(200_000)
    output = modeling.dropout(inputs, p, training=True)
    dropped = (output == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.005)
    assert output.mean().item() == pytest.approx(1.0, abs=0.01)
    kept = output[output != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-4)


def test_cpu_dropout_gradient_uses_the_forward_mask_and_the_generator_seed():
    inputs = torch.randn(4, 33, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    torch.manual_seed(3)
    output = modeling.dropout(inputs, 0.3, training=True)
    output.backward(torch.ones_like(output))
    kept = output != 0
    assert torch.equal(inputs.grad != 0, kept)
    assert torch.allclose(output[kept], inputs.detach()[kept] * inputs.grad[kept])
    torch.manual_seed(3)
    assert torch.equal(modeling.dropout(inputs.detach(), 0.3, training=True), output.detach())
    torch.manual_seed(4)
    assert not torch.equal(modeling.dropout(inputs.detach(), 0.3, training=True), output.detach())


def test_dropout_is_the_identity_in_eval_or_at_zero_and_empties_at_one():
    inputs = torch.randn(5, 6, dtype=torch.bfloat16)
    assert modeling.dropout(inputs, 0.5, training=False) is inputs
    assert modeling.dropout(inputs, 0.0, training=True) is inputs
    assert not modeling.dropout(inputs, 1.0, training=True).any()
    module = modeling.Dropout(0.5).eval()
    assert module(inputs) is inputs


def test_reversible_path_works_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = ReforBertForPreTraining(tiny_config(attention_backend="lsh")).train()
    input_ids = random_ids(2, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids, labels=input_ids, next_sentence_label=torch.tensor([1, 0])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("backend", ["full", "lsh"])
def test_chunked_feed_forward_equals_unchunked(backend):
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config()).eval()
    input_ids = random_ids(2, 29)
    whole = encode(model, backend, input_ids)
    model.config.feed_forward_chunk_size = 4
    chunked = encode(model, backend, input_ids)
    assert (whole - chunked).abs().max().item() <= 1e-6


# ---------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------


def _head_cases() -> list[tuple[type, dict, dict]]:
    ids = random_ids(2, 12, seed=3)
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[:, [2, 5]] = ids[:, [2, 5]]
    return [
        (ReforBertForPreTraining, {}, dict(labels=mlm_labels, next_sentence_label=torch.tensor([0, 1]))),
        (ReforBertForMaskedLM, {}, dict(labels=mlm_labels)),
        (ReforBertForSequenceClassification, {"num_labels": 3}, dict(labels=torch.tensor([2, 0]))),
        (ReforBertForSequenceClassification, {"num_labels": 1}, dict(labels=torch.tensor([0.5, 3.0]))),
        (ReforBertForTokenClassification, {"num_labels": 5}, dict(labels=torch.randint(0, 5, ids.shape))),
        (
            ReforBertForQuestionAnswering,
            {},
            dict(start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([2, 40])),
        ),
    ]


@pytest.mark.parametrize(("model_class", "config_overrides", "targets"), _head_cases())
@pytest.mark.parametrize("reversible", [True, False])
def test_every_head_returns_a_loss_that_backpropagates(model_class, config_overrides, targets, reversible):
    torch.manual_seed(0)
    model = model_class(tiny_config(reversible=reversible, **config_overrides)).train()
    ids = random_ids(2, 12, seed=3)
    output = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids), **targets)
    assert output.loss.dim() == 0 and torch.isfinite(output.loss)
    output.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.reforbert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_pretraining_scores_only_masked_positions_and_sums_its_losses():
    torch.manual_seed(0)
    model = ReforBertForPreTraining(tiny_config()).eval()
    ids = random_ids(2, 12)
    labels = torch.full_like(ids, -100)
    labels[0, 3] = ids[0, 3]
    labels[1, [1, 7]] = ids[1, [1, 7]]
    output = model(ids, labels=labels, next_sentence_label=torch.tensor([1, 0]))
    assert output.prediction_logits.shape == (3, VOCAB)
    assert output.seq_relationship_logits.shape == (2, 2)
    assert torch.allclose(output.loss, output.mlm_loss + output.nsp_loss)
    everywhere = model(ids).prediction_logits
    assert everywhere.shape == (2, 12, VOCAB)
    assert torch.allclose(everywhere[labels != -100], output.prediction_logits, atol=1e-5)
    only_mlm = model(ids, labels=labels)
    assert only_mlm.nsp_loss is None and torch.equal(only_mlm.loss, only_mlm.mlm_loss)
    as_tuple = model(ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], everywhere)


def test_pretraining_with_nothing_masked_gives_a_zero_mlm_loss_that_still_backpropagates():
    torch.manual_seed(0)
    model = ReforBertForPreTraining(tiny_config()).train()
    ids = random_ids(2, 12)
    nothing_masked = torch.full_like(ids, IGNORE_INDEX)
    output = model(ids, labels=nothing_masked, next_sentence_label=torch.tensor([1, 0]))
    assert output.prediction_logits.shape == (0, VOCAB)
    assert output.mlm_loss.item() == 0.0 and output.mlm_loss.requires_grad
    assert torch.equal(output.loss, output.mlm_loss + output.nsp_loss)
    output.loss.backward()
    assert model.nsp_head.weight.grad.abs().sum() > 0  # the next-sentence loss still trains
    assert not model.lm_head.dense.weight.grad.any()  # the head is in the graph, with zero gradient


@pytest.mark.parametrize("reversible", [True, False])
def test_masked_lm_loss_is_cross_entropy_over_the_labelled_positions_with_logits_everywhere(reversible):
    """The loss scores the labelled rows on their own; its value and its gradients are those of
    cross-entropy with ignore_index over the returned logits, which cover every position."""
    torch.manual_seed(0)
    model = ReforBertForMaskedLM(tiny_config(reversible=reversible, hidden_dropout_prob=0.0)).train()
    ids = random_ids(2, 12)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3] = ids[0, 3]
    labels[1, [1, 7]] = ids[1, [1, 7]]
    output = model(ids, labels=labels)
    assert output.logits.shape == (2, 12, VOCAB)
    everywhere = F.cross_entropy(output.logits.view(-1, VOCAB), labels.view(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(output.loss, everywhere, atol=1e-6)
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads_of_loss = torch.autograd.grad(output.loss, parameters, retain_graph=True, allow_unused=True)
    grads_of_everywhere = torch.autograd.grad(everywhere, parameters, allow_unused=True)
    for parameter, ours, expected in zip(parameters, grads_of_loss, grads_of_everywhere, strict=True):
        assert (ours is None) == (expected is None)
        if ours is not None:
            assert torch.allclose(ours, expected, atol=1e-6), parameter.shape
    nothing_labelled = model(ids, labels=torch.full_like(ids, IGNORE_INDEX)).loss
    assert torch.isnan(nothing_labelled)  # as cross-entropy with every target ignored


# ---------------------------------------------------------------------------------------------------
# Saving, loading, Auto classes and pipelines
# ---------------------------------------------------------------------------------------------------


def test_a_config_saved_with_the_retired_special_token_fields_still_loads(tmp_path: Path):
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    assert "sep_token_id" not in saved
    saved.update(sep_token_id=4, cls_token_id=5, mask_token_id=6)  # as earlier versions wrote them
    config_file.write_text(json.dumps(saved))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.mask_token_id == 6
    ids = random_ids(1, 10)
    with torch.no_grad():
        assert torch.equal(loaded(ids).last_hidden_state, model(ids).last_hidden_state)


@pytest.mark.parametrize(
    ("model_class", "auto_class"),
    [
        (ReforBertModel, AutoModel),
        (ReforBertForPreTraining, AutoModelForPreTraining),
        (ReforBertForMaskedLM, AutoModelForMaskedLM),
        (ReforBertForSequenceClassification, AutoModelForSequenceClassification),
        (ReforBertForTokenClassification, AutoModelForTokenClassification),
        (ReforBertForQuestionAnswering, AutoModelForQuestionAnswering),
    ],
)
def test_save_and_load_round_trip_is_exact(tmp_path: Path, model_class, auto_class):
    torch.manual_seed(0)
    model = model_class(tiny_config(attention_backend="lsh")).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ReforBertConfig)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    assert loaded.config.attention_backend == "lsh"
    ids = random_ids(2, 21)
    with torch.no_grad():
        expected, actual = model(ids).to_tuple(), loaded(ids).to_tuple()
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual, strict=True):
        assert torch.equal(a, b)
    if hasattr(loaded, "lm_head"):
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = ["나는", "학교에", "간다", "오늘", "날씨가", "좋다"]
    vocab = {**SPECIAL_TOKENS, **{word: len(SPECIAL_TOKENS) + i for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap_as_bert_tokenizer(tokenizer)


def test_fill_mask_pipeline_runs(tmp_path: Path):
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    model = ReforBertForMaskedLM(tiny_config(vocab_size=len(tokenizer)))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    fill_mask = pipeline("fill-mask", model=str(tmp_path), tokenizer=str(tmp_path))
    predictions = fill_mask("나는 [MASK] 간다", top_k=3)
    assert len(predictions) == 3
    assert all(0.0 <= p["score"] <= 1.0 for p in predictions)
    assert {p["token"] for p in predictions} <= set(range(len(tokenizer)))


@pytest.mark.parametrize(("backend", "bucket_size"), [("full", 0), ("lsh", 16), ("lsh", 4)])
def test_a_token_attends_to_itself_only_when_nothing_else_is_available(backend, bucket_size):
    # With the identity as values, each output row is the query's attention distribution.
    length = 16
    generator = torch.Generator().manual_seed(0)
    queries = 3 * torch.randn(1, 2, length, length, generator=generator)
    keys = torch.nn.functional.normalize(queries, dim=-1)
    values = torch.eye(length).expand(1, 2, length, length)

    def attention_weights(key_is_real: torch.Tensor) -> torch.Tensor:
        if backend == "full":
            bias = modeling.full_attention_bias(key_is_real, torch.float32)
            return modeling.full_attention(queries, keys, values, bias, dropout_p=0.0)
        rotations = torch.randn(2, length, 2, length // bucket_size, generator=generator)
        return modeling.lsh_attention(queries, keys, values, key_is_real, rotations, bucket_size, 0.0, False)

    weights = attention_weights(torch.ones(1, length, dtype=torch.bool))
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2, length), atol=1e-5)
    assert weights.diagonal(dim1=-2, dim2=-1).max().item() < 1e-6
    lone = torch.zeros(1, length, dtype=torch.bool)
    lone[0, 5] = True
    weights = attention_weights(lone)
    assert torch.allclose(weights[..., 5, 5], torch.ones(1, 2))


def test_a_pretraining_checkpoint_loads_as_a_masked_lm_with_the_same_predictions(tmp_path: Path):
    torch.manual_seed(0)
    pretraining = ReforBertForPreTraining(tiny_config()).eval()
    pretraining.save_pretrained(tmp_path)
    masked_lm = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = random_ids(1, 10)
    with torch.no_grad():
        assert torch.equal(masked_lm(ids).logits, pretraining(ids).prediction_logits)


@pytest.mark.parametrize("reversible", [True, False])
def test_hidden_states_are_returned_on_request(reversible):
    torch.manual_seed(0)
    model = ReforBertModel(tiny_config(num_hidden_layers=3, reversible=reversible)).eval()
    ids = random_ids(2, 9)
    output = model(ids, output_hidden_states=True)  # with grad enabled: the reversible case steps aside
    assert len(output.hidden_states) == 4
    assert all(state.shape == (2, 9, 32) for state in output.hidden_states)
    assert torch.equal(output.hidden_states[-1], output.last_hidden_state)
    assert torch.allclose(output.last_hidden_state, model(ids).last_hidden_state, atol=1e-6)
    assert model(ids).hidden_states is None


def test_sliced_hashing_matches_argmax_over_both_signs(monkeypatch):
    """Hashing in slices (to keep memory linear in the length) must pick the same buckets as one argmax
    over [xR, -xR] for the whole sequence, including across slice boundaries."""
    monkeypatch.setattr(modeling, "HASH_SLICE", 7)
    generator = torch.Generator().manual_seed(3)
    vectors = torch.randn(2, 3, 30, 8, generator=generator)
    rotations = torch.randn(3, 8, 4, 5, generator=generator)
    rotated = torch.einsum("bhld,hdrk->bhrlk", vectors, rotations)
    expected = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)
    assert torch.equal(modeling.hash_to_buckets(vectors, rotations), expected)


def test_lsh_chunk_sees_its_neighbours_on_both_sides_and_nothing_further():
    """With every vector hashed to one bucket the sorted order is the position order, so chunk 1 must
    draw on chunks 0, 1 and 2 (before AND after it) and on nothing in chunk 3."""
    bucket, chunks, head_dim = 16, 4, 8
    length = bucket * chunks
    direction = torch.randn(head_dim, generator=torch.Generator().manual_seed(0))
    queries = direction.expand(1, 1, length, head_dim).clone()
    keys = torch.nn.functional.normalize(queries, dim=-1)
    values = torch.randn(1, 1, length, head_dim, requires_grad=True)
    rotations = torch.randn(1, head_dim, 1, chunks)
    output = modeling.lsh_attention(
        queries, keys, values, torch.ones(1, length, dtype=torch.bool), rotations, bucket, 0.0, False
    )
    output[0, 0, bucket : 2 * bucket].sum().backward()
    used = values.grad[0, 0].abs().sum(dim=-1) > 0
    assert used[: 3 * bucket].all()
    assert not used[3 * bucket :].any()


@pytest.mark.slow  # compiling takes most of a minute on a 2-core CPU
def test_the_compiled_model_trains_like_the_eager_one():
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    config = tiny_config(attention_backend="lsh", reversible=True, hidden_dropout_prob=0.0)
    model = ReforBertForPreTraining(config).train()
    input_ids = random_ids(2, 24)
    labels = torch.where(
        torch.rand(input_ids.shape) < 0.3, input_ids, torch.full_like(input_ids, IGNORE_INDEX)
    )
    labels[:, 0] = input_ids[:, 0]
    inputs = dict(input_ids=input_ids, labels=labels, next_sentence_label=torch.tensor([0, 1]))

    def loss_and_grads(forward) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1234)
        loss = forward(**inputs).loss
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}

    eager_loss, eager_grads = loss_and_grads(model)
    # Draw the LSH rotations from the same generator as eager PyTorch does.
    with inductor_config.patch(fallback_random=True):
        compiled_loss, compiled_grads = loss_and_grads(torch.compile(model))
    assert compiled_loss == pytest.approx(eager_loss, abs=1e-5)
    for name, eager in eager_grads.items():
        error = (compiled_grads[name] - eager).norm() / eager.norm().clamp_min(1e-12)
        assert error.item() <= 1e-4, name
