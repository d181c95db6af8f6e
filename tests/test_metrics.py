"""Each metric against values worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from reforbert.tasks import metrics


def test_accuracy_and_confusion_matrix():
    predicted, gold = [0, 1, 1, 0], [0, 1, 0, 0]
    assert metrics.accuracy(predicted, gold) == pytest.approx(75.0)
    # rows = gold, columns = predicted: gold 0 was predicted 0 twice and 1 once; gold 1 predicted 1 once.
    assert metrics.confusion_matrix(predicted, gold, 2) == [[2, 1], [0, 1]]
    assert metrics.confusion_matrix([2, 0], [2, 2], 3) == [[0, 0, 0], [0, 0, 0], [1, 0, 1]]


def test_spearman_with_ties():
    # ranks of predicted: 1 2 3 4 5; ranks of gold (5 6 7 8 7): 1 2 3.5 5 3.5 (tie -> average rank).
    # deviations from the mean rank 3: x = -2 -1 0 1 2, y = -2 -1 .5 2 .5
    # covariance sum 4+1+0+2+1 = 8; sum x^2 = 10; sum y^2 = 9.5 -> rho = 8 / sqrt(95)
    value = metrics.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert value == pytest.approx(100 * 8 / math.sqrt(95))


def test_suffix_tags_become_prefix_tags():
    assert metrics.suffix_to_prefix_tag("PER-B") == "B-PER"
    assert metrics.suffix_to_prefix_tag("DAT-I") == "I-DAT"
    assert metrics.suffix_to_prefix_tag("O") == "O"
    with pytest.raises(ValueError):
        metrics.suffix_to_prefix_tag("B-PER")


def test_entity_f1_by_hand():
    gold = [["PER-B", "PER-I", "O", "ORG-B"], ["LOC-B", "O"]]  # entities: PER(0-1), ORG(3), LOC(0)
    all_but_one = [["PER-B", "PER-I", "O", "O"], ["LOC-B", "O"]]  # 2 predicted, both right
    # precision 2/2, recall 2/3 -> F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    scores = metrics.entity_scores(gold, all_but_one)
    assert scores["f1"] == pytest.approx(80.0)
    assert scores["precision"] == pytest.approx(100.0)
    assert scores["recall"] == pytest.approx(200 / 3)
    # PER(0-0) has the wrong extent and DAT the wrong type: 1 of 3 predicted right, 1 of 3 gold found.
    partly_wrong = [["PER-B", "O", "O", "ORG-B"], ["DAT-B", "O"]]
    assert metrics.entity_scores(gold, partly_wrong)["f1"] == pytest.approx(100 / 3)


def test_korquad_normalisation():
    assert metrics.korquad_normalize("《임종석》") == "임종석"
    assert metrics.korquad_normalize("(주)한국") == "주 한국"
    assert metrics.korquad_normalize("1,000원!") == "1000원"
    assert metrics.korquad_normalize("  KBS  ‘뉴스’ ") == "kbs 뉴스"
    assert metrics.korquad_exact_match("〈KBS 뉴스〉", "kbs 뉴스")
    assert not metrics.korquad_exact_match("1989년 2월", "1989년 2월 15일")


def test_korquad_character_f1_when_exact_match_is_zero():
    # prediction "1989년 2월" -> characters 1 9 8 9 년 2 월 (7)
    # gold "1989년 2월 15일" -> characters 1 9 8 9 년 2 월 1 5 일 (10)
    # common bag: 1 9 9 8 년 2 월 = 7 -> precision 7/7, recall 7/10, F1 = 2 * 0.7 / 1.7 = 14/17
    assert metrics.korquad_f1("1989년 2월", "1989년 2월 15일") == pytest.approx(14 / 17)
    assert metrics.korquad_f1("서울", "부산") == 0.0
    assert metrics.korquad_f1("", "부산") == 0.0


def test_korquad_scores_take_the_best_gold_answer_and_count_missing_predictions():
    gold = {"q1": ["1989년 2월 15일"], "q2": ["서울"], "q3": ["부산광역시", "부산"]}
    predictions = {"q1": "1989년 2월", "q3": "부산"}  # q2 has no prediction: scores 0
    scores = metrics.korquad_scores(predictions, gold)
    # EM: q1 0, q2 0, q3 1 (second gold answer) -> 1/3
    assert scores["exact_match"] == pytest.approx(100 / 3)
    # F1: q1 14/17, q2 0, q3 max(F1 vs 부산광역시 = 2*(1*2/5)/(1+2/5) = 4/7, 1) = 1
    assert scores["f1"] == pytest.approx(100 * (14 / 17 + 0 + 1) / 3)


def test_every_benchmark_but_naver_ner_is_scored_without_seqeval_installed() -> None:
    # A machine that fine-tunes the other benchmarks (a GPU rental without network access) may lack it.
    code = (
        "import sys; sys.modules['seqeval'] = sys.modules['seqeval.metrics'] = None\n"
        "import reforbert.cli, reforbert.finetuning, reforbert.report\n"
        "from reforbert.tasks.metrics import accuracy, spearman\n"
        "print(accuracy([1, 0], [1, 1]), round(spearman([1, 2, 3], [1, 2, 4])))\n"
        "from reforbert.tasks.metrics import entity_scores\n"
        "try:\n"
        "    entity_scores([['PER-B']], [['PER-B']])\n"
        "except ImportError:\n"
        "    print('seqeval needed for Naver NER')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["50.0 100", "seqeval needed for Naver NER"]
