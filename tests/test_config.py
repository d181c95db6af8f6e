"""ReforBertConfig: invalid shapes are refused at construction, presets and positions mean what they say,
and a saved configuration comes back unchanged."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from reforbert import ReforBertConfig
from reforbert.configuration_reforbert import ATTENTION_BACKENDS, PRESETS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_backend": "flash"}, "attention_backend must be one of"),
        ({"hidden_size": 250, "num_attention_heads": 4}, "not a multiple of num_attention_heads"),
        ({"hidden_size": 9, "num_attention_heads": 9}, "hidden_size must be even"),
        ({"lsh_bucket_size": 0}, "lsh_bucket_size and lsh_num_hashes must be positive"),
        ({"lsh_num_hashes": 0}, "lsh_bucket_size and lsh_num_hashes must be positive"),
    ],
)
def test_invalid_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReforBertConfig(**overrides)


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_every_attention_backend_is_accepted(backend: str) -> None:
    assert ReforBertConfig(attention_backend=backend).attention_backend == backend


def test_positions_are_the_product_of_the_axial_shape() -> None:
    assert ReforBertConfig().max_position_embeddings == 256 * 256
    assert ReforBertConfig(axial_position_shape=[8, 16]).max_position_embeddings == 128
    assert ReforBertConfig(axial_position_shape=[8, 16]).axial_position_shape == (8, 16)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_follow_the_bert_table(name: str) -> None:
    layers, hidden = PRESETS[name]
    config = ReforBertConfig.from_preset(name)
    assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
    assert config.num_attention_heads == hidden // 64  # heads of 64 dimensions, as in BERT
    assert config.intermediate_size == 4 * hidden


def test_preset_overrides_and_unknown_presets() -> None:
    config = ReforBertConfig.from_preset("mini", num_attention_heads=8, attention_backend="full")
    assert (config.hidden_size, config.num_attention_heads, config.attention_backend) == (256, 8, "full")
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of tiny, mini"):
        ReforBertConfig.from_preset("huge")
    with pytest.raises(ValueError, match="not a multiple"):
        ReforBertConfig.from_preset("mini", num_attention_heads=3)  # validation applies to presets too


def test_saved_config_loads_back_unchanged(tmp_path) -> None:
    config = ReforBertConfig.from_preset(
        "tiny", attention_backend="lsh", lsh_bucket_size=32, axial_position_shape=(16, 32), reversible=False
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ReforBertConfig)
    for name in ("hidden_size", "num_hidden_layers", "attention_backend", "lsh_bucket_size", "reversible"):
        assert getattr(loaded, name) == getattr(config, name)
    assert loaded.max_position_embeddings == 512
