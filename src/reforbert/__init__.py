"""ReforBERT: a Korean BERT whose encoder is a Reformer."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from reforbert.configuration_reforbert import PRESETS, SPECIAL_TOKENS, ReforBertConfig
from reforbert.modeling_reforbert import (
    ReforBertForMaskedLM,
    ReforBertForPreTraining,
    ReforBertForQuestionAnswering,
    ReforBertForSequenceClassification,
    ReforBertForTokenClassification,
    ReforBertModel,
    ReforBertPreTrainedModel,
)

__version__ = "0.1.0"

# Importing the package makes "reforbert" checkpoints loadable through the Auto* classes.
AutoConfig.register(ReforBertConfig.model_type, ReforBertConfig, exist_ok=True)
for _auto_class, _model_class in (
    (AutoModel, ReforBertModel),
    (AutoModelForPreTraining, ReforBertForPreTraining),
    (AutoModelForMaskedLM, ReforBertForMaskedLM),
    (AutoModelForSequenceClassification, ReforBertForSequenceClassification),
    (AutoModelForTokenClassification, ReforBertForTokenClassification),
    (AutoModelForQuestionAnswering, ReforBertForQuestionAnswering),
):
    _auto_class.register(ReforBertConfig, _model_class, exist_ok=True)

__all__ = [
    "PRESETS",
    "SPECIAL_TOKENS",
    "ReforBertConfig",
    "ReforBertForMaskedLM",
    "ReforBertForPreTraining",
    "ReforBertForQuestionAnswering",
    "ReforBertForSequenceClassification",
    "ReforBertForTokenClassification",
    "ReforBertModel",
    "ReforBertPreTrainedModel",
    "__version__",
]
