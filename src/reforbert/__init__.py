"""ReforBERT: a Korean BERT whose encoder is a Reformer."""

from reforbert.configuration_reforbert import PRESETS, SPECIAL_TOKENS, ReforBertConfig

__version__ = "0.1.0"

__all__ = ["PRESETS", "SPECIAL_TOKENS", "ReforBertConfig", "__version__"]
