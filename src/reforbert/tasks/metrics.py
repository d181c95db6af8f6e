"""The scores each Korean benchmark reports, computed exactly as the benchmark defines them.

All percentages are returned on a 0-100 scale, as the published results tables print them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr


def accuracy(predicted: Sequence[int] | np.ndarray, gold: Sequence[int] | np.ndarray) -> float:
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    if len(predicted) != len(gold) or len(gold) == 0:
        raise ValueError(
            f"accuracy needs equally many predictions and labels, got {len(predicted)}/{len(gold)}"
        )
    return float((predicted == gold).mean() * 100.0)


def confusion_matrix(
    predicted: Sequence[int] | np.ndarray, gold: Sequence[int] | np.ndarray, num_labels: int
) -> list[list[int]]:
    """Rows are gold classes, columns predicted classes (``matrix[gold][predicted]``)."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix.tolist()


def spearman(predicted: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation x 100 (ties get average ranks), the KorSTS metric."""
    correlation = spearmanr(np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64))[0]
    return float(correlation * 100.0)


def suffix_to_prefix_tag(tag: str) -> str:
    """Naver NER writes ``PER-B``; seqeval reads IOB2 prefixes, ``B-PER``."""
    if tag == "O":
        return "O"
    entity, _, position = tag.rpartition("-")
    if position not in ("B", "I") or not entity:
        raise ValueError(f"not a suffix-style tag: {tag!r}")
    return f"{position}-{entity}"


def entity_scores(
    gold_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity-level precision / recall / F1 x 100 (seqeval, CoNLL rules) over suffix-style tag sequences."""
    # Imported here: only Naver NER needs seqeval, and a machine that fine-tunes the other benchmarks
    # (a short GPU rental without network access, say) may not have it.
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [[suffix_to_prefix_tag(tag) for tag in sentence] for sentence in gold_tags]
    predicted = [[suffix_to_prefix_tag(tag) for tag in sentence] for sentence in predicted_tags]
    return {
        "f1": float(f1_score(gold, predicted, zero_division=0) * 100.0),
        "precision": float(precision_score(gold, predicted, zero_division=0) * 100.0),
        "recall": float(recall_score(gold, predicted, zero_division=0) * 100.0),
    }


# --- KorQuAD 1.0 (the official v1.0 evaluation) ---------------------------------------------------

_KORQUAD_SPACED_SYMBOLS = re.compile("['\"《》<>〈〉()‘’]")
_ASCII_PUNCTUATION = set(string.punctuation)


def korquad_normalize(text: str) -> str:
    """Quotes and brackets become spaces, then lower-case, drop ASCII punctuation, collapse whitespace."""
    text = _KORQUAD_SPACED_SYMBOLS.sub(" ", text).lower()
    text = "".join(character for character in text if character not in _ASCII_PUNCTUATION)
    return " ".join(text.split())


def korquad_exact_match(prediction: str, gold: str) -> bool:
    return korquad_normalize(prediction) == korquad_normalize(gold)


def korquad_f1(prediction: str, gold: str) -> float:
    """F1 over the bag of characters (spaces removed) of the normalised strings, in [0, 1]."""
    predicted_chars = list(korquad_normalize(prediction).replace(" ", ""))
    gold_chars = list(korquad_normalize(gold).replace(" ", ""))
    overlap = sum((Counter(predicted_chars) & Counter(gold_chars)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_chars)
    recall = overlap / len(gold_chars)
    return 2 * precision * recall / (precision + recall)


def korquad_scores(
    predictions: Mapping[str, str], gold_answers: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Mean EM and F1 x 100 over the gold questions; each question scores its best gold answer.

    A question without a prediction scores 0, as in the official script.
    """
    if not gold_answers:
        raise ValueError("no questions to score")
    exact, f1 = 0.0, 0.0
    for question_id, answers in gold_answers.items():
        if question_id not in predictions:
            continue
        prediction = predictions[question_id]
        exact += max(float(korquad_exact_match(prediction, answer)) for answer in answers)
        f1 += max(korquad_f1(prediction, answer) for answer in answers)
    return {"exact_match": 100.0 * exact / len(gold_answers), "f1": 100.0 * f1 / len(gold_answers)}
