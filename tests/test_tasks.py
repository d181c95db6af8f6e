"""Task modules: reading each genuine format with its quirks, encoding, and scoring from logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from reforbert.configuration_reforbert import IGNORE_INDEX
from reforbert.errors import ReforBertInputError
from reforbert.tasks import TASKS, get_task
from reforbert.tasks.korquad import KorQuadTask, QaExample
from reforbert.tasks.naver_ner import NER_LABELS

SHARED_TASKS = Path(
    os.environ.get("REFORBERT_SHARED_DATA", Path(__file__).parents[1].parent / "shared" / "data")
)
SHARED_TASKS = SHARED_TASKS / "tasks"


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# --- registry ---------------------------------------------------------------------------------------


def test_registry_names_and_defaults():
    assert list(TASKS) == ["nsmc", "naver-ner", "paws", "kornli", "korsts", "question-pair", "korquad"]
    expected = {
        "nsmc": (128, 10, 5e-5, 32),
        "naver-ner": (128, 20, 5e-5, 32),
        "paws": (128, 15, 3e-5, 64),
        "kornli": (128, 15, 5e-5, 128),
        "korsts": (128, 10, 5e-5, 32),
        "question-pair": (128, 10, 5e-5, 32),
        "korquad": (512, 7, 5e-5, 32),
    }
    for name, (length, epochs, rate, batch) in expected.items():
        task = get_task(name)
        assert task.name == name
        defaults = task.defaults
        assert (defaults.max_seq_length, defaults.epochs, defaults.learning_rate, defaults.batch_size) == (
            length,
            epochs,
            rate,
            batch,
        )
    korquad = get_task("korquad").defaults
    assert (korquad.doc_stride, korquad.max_query_length, korquad.max_answer_length) == (128, 64, 30)


def test_unknown_task_lists_the_known_names():
    with pytest.raises(ReforBertInputError, match="known tasks: nsmc, naver-ner, paws"):
        get_task("klue")


def test_label_sets():
    assert get_task("nsmc").label_names == ["negative", "positive"]
    assert get_task("paws").label_names == ["not_paraphrase", "paraphrase"]
    assert get_task("kornli").label_names == ["entailment", "neutral", "contradiction"]
    assert get_task("question-pair").label_names == ["same_question", "different_question"]
    assert get_task("korsts").label_names == [] and get_task("korsts").num_labels == 1
    ner = get_task("naver-ner").label_names
    assert len(ner) == 29 and ner[:5] == ["O", "PER-B", "PER-I", "FLD-B", "FLD-I"] and ner[-1] == "TRM-I"


# --- sentence classification files ------------------------------------------------------------------


def test_nsmc_keeps_empty_documents_and_quotes(tmp_path):
    path = write(
        tmp_path / "ratings.txt",
        "id\tdocument\tlabel\n9847595\t볼수록 마음이 아려오기에 9점을 준다..\t1\n1034283\t\t0\n"
        '42\t"""최고""라는 말이 아깝다"\t0\n',
    )
    task = get_task("nsmc")
    examples = task.read(path)
    assert [example.text_a for example in examples] == [
        "볼수록 마음이 아려오기에 9점을 준다..",
        "",
        '"""최고""라는 말이 아깝다"',
    ]
    assert [example.label for example in examples] == [1, 0, 0]
    assert [example.line for example in examples] == [2, 3, 4]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1\t좋다\n", r"ratings.txt:2: expected 3 tab-separated fields, found 2"),
        ("1\t좋다\t긍정\n", r"ratings.txt:2: unknown label '긍정'; allowed: 0 \(negative\), 1 \(positive\)"),
        ("1\t좋다\t2\n", r"ratings.txt:2: unknown label '2'"),
    ],
)
def test_nsmc_malformed_rows_name_file_and_line(tmp_path, body, message):
    path = write(tmp_path / "ratings.txt", "id\tdocument\tlabel\n" + body)
    with pytest.raises(ReforBertInputError, match=message):
        get_task("nsmc").read(path)


def test_wrong_header_is_reported_on_line_1(tmp_path):
    path = write(tmp_path / "x.tsv", "question1\tquestion2\tlabel\n가\t나\t0\n")
    with pytest.raises(ReforBertInputError, match=r"x.tsv:1: expected the header"):
        get_task("question-pair").read(path)


def test_paws_drops_untranslated_rows_and_counts_them(tmp_path):
    path = write(
        tmp_path / "dev_2k.tsv",
        "id\tsentence1\tsentence2\tlabel\n"
        "4\t위원회가 탄생했습니다.\t위원회로 구성되었습니다.\t1\n"
        '157\tNS\t"T"는 행렬과 유사합니다.\t0\n'
        "484\t물이다.\tNS\t0\n"
        "6\tKathy와 그녀의 남편.\tKathy와 남편.\t0\n",
    )
    task = get_task("paws")
    examples = task.read(path)
    assert task.dropped_rows == 2
    assert [(example.text_a, example.label) for example in examples] == [
        ("위원회가 탄생했습니다.", 1),
        ("Kathy와 그녀의 남편.", 0),
    ]


def test_kornli_reads_stray_quotes_as_text(tmp_path):
    # A CSV reader would open a quoted field at the first '"' and swallow the following rows.
    path = write(
        tmp_path / "xnli.dev.ko.tsv",
        "sentence1\tsentence2\tgold_label\n"
        '그리고 그가 말했다, "엄마, 저 왔어요.\t그는 전화를 걸었다.\tneutral\n'
        "그는 한마디도 하지 않았다.\t그가 말했다.\tcontradiction\n"
        '"그렇다\t그렇다.\tentailment\n',
    )
    examples = get_task("kornli").read(path)
    assert len(examples) == 3
    assert examples[0].text_a == '그리고 그가 말했다, "엄마, 저 왔어요.'
    assert [example.label for example in examples] == [1, 2, 0]


def test_kornli_unknown_label_lists_the_allowed_set(tmp_path):
    path = write(tmp_path / "nli.tsv", "sentence1\tsentence2\tgold_label\n가\t나\tentails\n")
    with pytest.raises(
        ReforBertInputError, match=r"nli.tsv:2: .*allowed: entailment \(entailment\), neutral"
    ):
        get_task("kornli").read(path)


def test_korsts_no_final_newline_stray_quote_and_float_scores(tmp_path):
    path = write(
        tmp_path / "sts-dev.tsv",
        "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
        "main-captions\tMSRvid\t2012test\t0000\t5.000\t한 남자가 춤을 추고 있다.\t남자가 춤춘다.\n"
        'main-news\theadlines\t2015\t0001\t1.250\t"그는 말했다.\t그녀는 웃었다."',  # no final newline
    )
    examples = get_task("korsts").read(path)
    assert [example.label for example in examples] == [5.0, 1.25]
    assert examples[1].text_a == '"그는 말했다.' and examples[1].text_b == '그녀는 웃었다."'


@pytest.mark.parametrize(
    ("score", "message"), [("다섯", "score '다섯' is not a number"), ("5.5", "score 5.5 is outside 0.0-5.0")]
)
def test_korsts_bad_scores(tmp_path, score, message):
    header = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
    path = write(tmp_path / "sts.tsv", header + f"g\tf\t2012\t1\t{score}\t가\t나\n")
    with pytest.raises(ReforBertInputError, match=rf"sts.tsv:2: {message}"):
        get_task("korsts").read(path)


def test_question_pair_keeps_file_ids_and_quotes(tmp_path):
    path = write(
        tmp_path / "train.txt",
        "question1\tquestion2\tis_duplicate\n"
        "여자친구가 데이트 시간을 너무 안 지켜.\t여자친구가 데이트 시간을 너무 안 지켜.\t0\n"
        '사랑한다고 고백해 볼까\t"가족끼리 ""사랑해요""라는말 하는거 어색해"\t1\n',
    )
    task = get_task("question-pair")
    examples = task.read(path)
    assert [task.label_names[example.label] for example in examples] == [
        "same_question",
        "different_question",
    ]
    assert examples[1].text_b == '"가족끼리 ""사랑해요""라는말 하는거 어색해"'


def test_pair_encoding_and_accuracy_scoring(tmp_path, tiny_tokenizer):
    path = write(
        tmp_path / "train.txt",
        "question1\tquestion2\tis_duplicate\n가나\t다\t0\n라\t마바사아자\t1\n가\t가\t0\n",
    )
    task = get_task("question-pair")
    examples = task.read(path)
    encoded = task.encode(examples, tiny_tokenizer, max_seq_length=6, training=True)
    first = encoded.model_inputs[0]
    vocab = tiny_tokenizer.get_vocab()
    assert first["input_ids"] == [5, vocab["가"], vocab["##나"], 4, vocab["다"], 4]
    assert first["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert first["labels"] == 0
    # longest_first truncation trims the long second question to fit 6 tokens
    assert len(encoded.model_inputs[1]["input_ids"]) == 6
    logits = np.array([[2.0, 1.0], [0.0, 1.0], [0.0, 3.0]])  # predicts 0, 1, 1; gold 0, 1, 0
    scores = task.score(examples, encoded, logits)
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["confusion_matrix"] == [[1, 1], [0, 1]]


def test_single_sentence_encoding_keeps_empty_documents(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "ratings.txt", "id\tdocument\tlabel\n1\t재밌다\t1\n2\t\t0\n")
    task = get_task("nsmc")
    encoded = task.encode(task.read(path), tiny_tokenizer, max_seq_length=3, training=True)
    vocab = tiny_tokenizer.get_vocab()
    assert [item["input_ids"] for item in encoded.model_inputs] == [[5, vocab["재"], 4], [5, 4]]
    assert [item["labels"] for item in encoded.model_inputs] == [1, 0]


def test_regression_encoding_and_spearman(tmp_path, tiny_tokenizer):
    header = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
    rows = "".join(f"g\tf\t2012\t{i}\t{score}\t가\t나\n" for i, score in enumerate([0.5, 2.0, 4.5]))
    task = get_task("korsts")
    examples = task.read(write(tmp_path / "sts.tsv", header + rows))
    encoded = task.encode(examples, tiny_tokenizer, max_seq_length=16, training=True)
    assert [item["labels"] for item in encoded.model_inputs] == [0.5, 2.0, 4.5]
    assert task.score(examples, encoded, np.array([[0.1], [0.3], [0.2]]))["spearman"] == pytest.approx(50.0)


# --- Naver NER ------------------------------------------------------------------------------------


def test_ner_reads_and_validates(tmp_path):
    path = write(
        tmp_path / "train.tsv",
        "T1 부문에는 랠리를 위해 .\tORG-B O O O O\n프레드가 넘어진 건\tPER-B O O\n",
    )
    sentences = get_task("naver-ner").read(path)
    assert sentences[1].words == ["프레드가", "넘어진", "건"] and sentences[1].tags == ["PER-B", "O", "O"]
    bad = write(tmp_path / "bad.tsv", "가 나\tO O\n다 라\tO B-PER\n")
    with pytest.raises(
        ReforBertInputError, match=r"bad.tsv:2: unknown tag 'B-PER'; allowed: O, PER-B, PER-I"
    ):
        get_task("naver-ner").read(bad)
    uneven = write(tmp_path / "uneven.tsv", "가 나 다\tO O\n")
    with pytest.raises(ReforBertInputError, match=r"uneven.tsv:1: 3 words but 2 tags"):
        get_task("naver-ner").read(uneven)


def test_ner_labels_sit_on_the_first_sub_word(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "ner.tsv", "T1 부문에는 (주)한국 .\tORG-B O CVL-B O\n")
    task = get_task("naver-ner")
    sentences = task.read(path)
    encoded = task.encode(sentences, tiny_tokenizer, max_seq_length=128, training=True)
    tokens = tiny_tokenizer.convert_ids_to_tokens(encoded.model_inputs[0]["input_ids"])
    assert tokens == [
        "[CLS]",
        "T",
        "##1",
        "부",
        "##문",
        "##에",
        "##는",
        "(",
        "주",
        ")",
        "한",
        "##국",
        ".",
        "[SEP]",
    ]
    org_b, cvl_b, outside = NER_LABELS.index("ORG-B"), NER_LABELS.index("CVL-B"), 0
    assert (org_b, cvl_b) == (7, 11)
    ignored = IGNORE_INDEX
    assert encoded.model_inputs[0]["labels"] == [
        ignored, org_b, ignored, outside, ignored, ignored, ignored,
        cvl_b, ignored, ignored, ignored, ignored, outside, ignored,
    ]  # fmt: skip
    assert encoded.metadata[0]["word_first_subword"] == [1, 3, 7, 12]


def test_ner_truncated_words_are_predicted_outside_and_scored(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "ner.tsv", "T1 부문에는 (주)한국 .\tORG-B O CVL-B O\n")
    task = get_task("naver-ner")
    sentences = task.read(path)
    encoded = task.encode(sentences, tiny_tokenizer, max_seq_length=8, training=False)
    # [CLS] T ##1 부 ##문 ##에 ##는 [SEP]: words 2 and 3 are cut off
    assert encoded.metadata[0]["word_first_subword"] == [1, 3, -1, -1]
    logits = np.zeros((1, 8, len(NER_LABELS)))
    logits[0, 1, NER_LABELS.index("ORG-B")] = 5.0  # T1 -> ORG-B (right)
    logits[0, 3, 0] = 5.0  # 부문에는 -> O (right)
    scores = task.score(sentences, encoded, logits)
    # gold ORG and CVL; predicted ORG only: precision 1, recall 1/2, F1 2/3
    assert scores["f1"] == pytest.approx(200 / 3)
    assert scores["truncated_words"] == 2


# --- KorQuAD ----------------------------------------------------------------------------------------

CONTEXT = "임종석은 1989년 2월 15일 여의도에서 체포되었다. 그는 전대협 의장이었다."
ANSWER = "1989년 2월 15일"


def squad_json(articles: list[list[tuple[str, str, str, int]]]) -> str:
    """articles -> one paragraph each, with (id, question, answer, answer_start) questions."""
    data = []
    for index, questions in enumerate(articles):
        qas = [
            {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}
            for qid, question, answer, start in questions
        ]
        data.append({"title": f"문서{index}", "paragraphs": [{"context": CONTEXT, "qas": qas}]})
    return json.dumps({"version": "KorQuAD_v1.0_dev", "data": data}, ensure_ascii=False)


def test_korquad_windows_offsets_and_cls_for_windows_without_the_answer(tmp_path, tiny_tokenizer):
    start = CONTEXT.index(ANSWER)
    path = write(tmp_path / "dev.json", squad_json([[("q1", "체포된 날은?", ANSWER, start)]]))
    task = KorQuadTask(doc_stride=5)
    examples = task.read(path)
    # question: 체 ##포 ##된 날 ##은 ? (6 tokens) -> context room = 23 - 6 - 3 = 14 tokens per window;
    # the context has 36 tokens, windows start at 0, 5, 10, 15, 20, 25; only the first holds the answer
    # (context tokens 4..13: 1 ##9 ##8 ##9 ##년 2 ##월 1 ##5 ##일).
    encoded = task.encode(examples, tiny_tokenizer, max_seq_length=23, training=False)
    assert len(encoded.model_inputs) == 6
    positions = [(item["start_positions"], item["end_positions"]) for item in encoded.model_inputs]
    context_start = 8  # [CLS] + 6 question tokens + [SEP]
    assert positions == [(4 + context_start, 13 + context_start)] + [(0, 0)] * 5
    first = encoded.model_inputs[0]
    assert first["token_type_ids"] == [0] * 8 + [1] * 15
    assert tiny_tokenizer.convert_ids_to_tokens(first["input_ids"][:8]) == [
        "[CLS]", "체", "##포", "##된", "날", "##은", "?", "[SEP]",
    ]  # fmt: skip
    offsets = encoded.metadata[0]["offsets"]
    span_start, span_end = positions[0][0] - context_start, positions[0][1] - context_start
    assert CONTEXT[offsets[span_start][0] : offsets[span_end][1]] == ANSWER
    # the second window starts 5 context tokens in: its first token is 9 of 1989
    assert encoded.metadata[1]["offsets"][0] == (CONTEXT.index("1989") + 1, CONTEXT.index("1989") + 2)


def test_korquad_n_best_search_across_windows(tmp_path, tiny_tokenizer):
    start = CONTEXT.index(ANSWER)
    path = write(tmp_path / "dev.json", squad_json([[("q1", "체포된 날은?", ANSWER, start)]]))
    task = KorQuadTask(doc_stride=5)
    examples = task.read(path)
    encoded = task.encode(examples, tiny_tokenizer, max_seq_length=23, training=False)
    n, length = len(encoded.model_inputs), 23
    start_logits, end_logits = np.full((n, length), -10.0), np.full((n, length), -10.0)
    # window 0: the right span (context tokens 4..13 = input positions 12..21), score 8
    start_logits[0, 12], end_logits[0, 21] = 4.0, 4.0
    # window 0: [CLS] and question positions score highest but are not context
    start_logits[0, 0], end_logits[0, 1] = 20.0, 20.0
    # window 1: a strong start after a strong end (end < start: not a span), score 18 if it counted
    start_logits[1, 20], end_logits[1, 9] = 9.0, 9.0
    # window 2: a valid but weaker span, score 6; the best is taken over all windows
    start_logits[2, 10], end_logits[2, 11] = 3.0, 3.0
    scores = task.score(examples, encoded, (start_logits, end_logits))
    assert task.predict_answers(examples, encoded, start_logits, end_logits) == {"q1": ANSWER}
    assert scores["exact_match"] == pytest.approx(100.0) and scores["f1"] == pytest.approx(100.0)
    assert scores["misaligned_answers"] == 0


def test_korquad_max_answer_length_limits_spans(tmp_path, tiny_tokenizer):
    start = CONTEXT.index(ANSWER)
    path = write(tmp_path / "dev.json", squad_json([[("q1", "체포된 날은?", ANSWER, start)]]))
    task = KorQuadTask(doc_stride=5, max_answer_length=3)
    examples = task.read(path)
    encoded = task.encode(examples, tiny_tokenizer, max_seq_length=23, training=False)
    start_logits = np.zeros((len(encoded.model_inputs), 23))
    end_logits = np.zeros_like(start_logits)
    start_logits[0, 12], end_logits[0, 21] = 4.0, 4.0  # 10 tokens long: not allowed
    end_logits[0, 13] = 1.0  # "19" (2 tokens) is the best allowed span starting at 12
    assert task.predict_answers(examples, encoded, start_logits, end_logits) == {"q1": "19"}


def test_korquad_question_is_cut_to_max_query_length(tmp_path, tiny_tokenizer):
    start = CONTEXT.index(ANSWER)
    path = write(tmp_path / "dev.json", squad_json([[("q1", "체포된 날은?", ANSWER, start)]]))
    task = KorQuadTask(max_query_length=3)
    encoded = task.encode(task.read(path), tiny_tokenizer, max_seq_length=64, training=True)
    assert len(encoded.model_inputs) == 1
    item = encoded.model_inputs[0]
    assert tiny_tokenizer.convert_ids_to_tokens(item["input_ids"][:5]) == [
        "[CLS]",
        "체",
        "##포",
        "##된",
        "[SEP]",
    ]
    # 36 context tokens fit in one window; the answer is context tokens 4..13 after 5 leading positions
    assert (item["start_positions"], item["end_positions"]) == (9, 18)
    assert len(item["input_ids"]) == 5 + 36 + 1


def test_korquad_misaligned_answer_is_counted_not_fatal(tmp_path, tiny_tokenizer):
    start = CONTEXT.index(ANSWER)
    path = write(
        tmp_path / "dev.json",
        squad_json([[("q1", "체포된 날은?", ANSWER, start), ("q2", "누가 체포되었나?", "임종석", 3)]]),
    )
    task = KorQuadTask()
    examples = task.read(path)
    train = task.encode(examples, tiny_tokenizer, max_seq_length=128, training=True)
    assert task.misaligned_answers == 1
    assert {meta["example_index"] for meta in train.metadata} == {0}  # q2 is not trained on
    dev = task.encode(examples, tiny_tokenizer, max_seq_length=128, training=False)
    logits = np.zeros((len(dev.model_inputs), 128))
    scores = task.score(examples, dev, (logits, logits.copy()))
    assert scores["misaligned_answers"] == 1 and scores["questions"] == 2


def test_korquad_split_dev_keeps_articles_whole(tmp_path):
    start = CONTEXT.index(ANSWER)
    articles = [[(f"a{a}q{q}", "체포된 날은?", ANSWER, start) for q in range(3)] for a in range(10)]
    task = KorQuadTask()
    examples = task.read(write(tmp_path / "dev.json", squad_json(articles)))
    train, dev = task.split_dev(examples, fraction=0.2, seed=42)
    train_articles, dev_articles = {e.article for e in train}, {e.article for e in dev}
    assert len(dev_articles) == 2 and len(train_articles) == 8 and not train_articles & dev_articles
    assert len(train) + len(dev) == 30
    assert task.split_dev(examples, fraction=0.2, seed=42) == (train, dev)


def test_korquad_bad_files(tmp_path):
    task = KorQuadTask()
    with pytest.raises(ReforBertInputError, match=r"bad.json:3: not valid JSON"):
        task.read(write(tmp_path / "bad.json", '{"data": [\n{},\n!]}'))
    no_answers = {
        "data": [{"paragraphs": [{"context": "가", "qas": [{"id": "x", "question": "?", "answers": []}]}]}]
    }
    with pytest.raises(ReforBertInputError, match=r"question x: needs a non-empty"):
        task.read(write(tmp_path / "empty.json", json.dumps(no_answers)))


def test_qa_example_alignment():
    example = QaExample("q", "?", CONTEXT, [(ANSWER, CONTEXT.index(ANSWER)), (ANSWER, 0)], "t", 0, 0)
    assert example.answer_is_aligned(0) and not example.answer_is_aligned(1)


# --- the real files, where present -------------------------------------------------------------------

REAL_FILES = [
    # (task, file, examples, label counts by label id or None)
    ("nsmc", "nsmc/ratings_train.proxy.txt", 150_000, {0: 75_173, 1: 74_827}),
    ("naver-ner", "naver_ner/train.tsv", 8_899, None),
    ("paws", "paws_ko/dev_2k.tsv", 1_965, {0: 1_160 - 35, 1: 840}),
    ("kornli", "kornli/xnli.dev.ko.tsv", 2_490, {0: 830, 1: 830, 2: 830}),
    ("korsts", "korsts/sts-train.tsv", 5_749, None),
    ("korsts", "korsts/sts-dev.tsv", 1_500, None),
    ("question-pair", "question_pair/train.txt", 6_136, {0: 4_169, 1: 1_967}),
    ("question-pair", "question_pair/validation.txt", 682, {0: 432, 1: 250}),
    ("korquad", "korquad1/KorQuAD_v1.0_dev.json", 5_774, None),
]


@pytest.mark.parametrize(("name", "relative", "count", "label_counts"), REAL_FILES)
def test_real_files_have_the_documented_counts(name, relative, count, label_counts):
    path = SHARED_TASKS / relative
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    task = get_task(name)
    examples = task.read(path)
    assert len(examples) == count
    if label_counts is not None:
        counts: dict[int, int] = {}
        for example in examples:
            counts[example.label] = counts.get(example.label, 0) + 1
        assert counts == label_counts
    if name == "paws":
        assert task.dropped_rows == 35
    if name == "naver-ner":
        assert sum(len(sentence.words) for sentence in examples) == 106_358
        assert examples[0].tags[0] == "ORG-B"
    if name == "korquad":
        assert len({example.article for example in examples}) == 140
        # 964 paragraphs, one of them without questions; a few repeat another paragraph's context
        assert max(example.paragraph for example in examples) == 963
        assert len({example.paragraph for example in examples}) == 963
        assert len({example.context for example in examples}) == 960
        assert examples[0].question_id == "6548850-0-0" and examples[0].answers[0] == ("1989년 2월 15일", 0)
        assert sum(not example.answer_is_aligned() for example in examples) == 0
    if name == "korsts":
        # Every score as the file writes it (the fifth column, parsed here independently of the reader),
        # and the scale's both ends present.
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line]
        labels = [example.label for example in examples]
        assert sum(labels) == pytest.approx(sum(float(row[4]) for row in rows))
        assert (min(labels), max(labels)) == (0.0, 5.0)
