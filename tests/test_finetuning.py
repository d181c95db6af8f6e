"""Fine-tuning end to end on easy synthetic signals, one run per head type, through the real task modules.

Each synthetic benchmark file is written in its task's genuine format, and each signal is one that a
tiny ReforBERT (with the shared tiny character tokenizer) learns in about a hundred steps: a label
that is the presence of a word, a score that counts a word, an entity that is a name word, an answer
that follows a marker word. The held-out score must clearly beat guessing, so a broken head,
collator, label mapping or scorer fails the test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from reforbert import ReforBertConfig
from reforbert.cli import main
from reforbert.errors import ReforBertInputError
from reforbert.finetuning import PaddingCollator, finetune, resolve_bf16, subsample
from reforbert.modeling_reforbert import ReforBertForPreTraining
from reforbert.tasks import get_task

FILLER = [a + b for a in "가나다라마바사아자차" for b in "고노도로모"]  # 50 two-syllable words
POSITIVE = "좋다"
SIMILAR = "같다"
NAMES = ["철수", "영희", "민수", "지영", "현우", "수진"]
MARKER = "정답은"
ANSWERS = ["사과", "포도", "딸기", "참외", "수박", "자두"]
QUESTION_WORDS = ["무엇", "인가"]

# Tiny but able to learn: the signals need one attention hop at most.
TRAIN = dict(learning_rate=5e-3, batch_size=16, progress=False, overwrite=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_pretrained_model(folder: Path, vocab_size: int) -> None:
    """A randomly initialised tiny ReforBERT, saved as a pretraining run's model folder is."""
    torch.manual_seed(0)
    config = ReforBertConfig.from_preset(
        "tiny",
        vocab_size=vocab_size,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    ReforBertForPreTraining(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A pretraining run's model folder: the model and its tokenizer side by side."""
    folder = tmp_path_factory.mktemp("run") / "model"
    save_tiny_pretrained_model(folder, vocab_size=len(tiny_tokenizer))
    tiny_tokenizer.save_pretrained(folder)
    return folder


def sentence(rng: random.Random, length: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(length)]


def write_nsmc(path: Path, n: int, seed: int) -> None:
    """Positive exactly when the review contains POSITIVE."""
    rng = random.Random(seed)
    lines = ["id\tdocument\tlabel"]
    for index in range(n):
        words = sentence(rng, rng.randint(2, 5))
        label = index % 2
        if label:
            words.insert(rng.randrange(len(words) + 1), POSITIVE)
        lines.append(f"{1000 + index}\t{' '.join(words)}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_korsts(path: Path, n: int, seed: int) -> None:
    """The score is how many times SIMILAR occurs in the first sentence (0-5)."""
    rng = random.Random(seed)
    lines = ["genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2"]
    for index in range(n):
        count = rng.randint(0, 5)
        words = sentence(rng, rng.randint(2, 5))
        for _ in range(count):
            words.insert(rng.randrange(len(words) + 1), SIMILAR)
        other = " ".join(sentence(rng, rng.randint(2, 5)))
        lines.append(f"main-captions\tMSRvid\t2012test\t{index:04d}\t{count:.3f}\t{' '.join(words)}\t{other}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_naver_ner(path: Path, n: int, seed: int) -> None:
    """Every name word is a one-word PER entity; everything else is outside."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = sentence(rng, rng.randint(4, 8))
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(NAMES))
        tags = ["PER-B" if word in NAMES else "O" for word in words]
        lines.append(f"{' '.join(words)}\t{' '.join(tags)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_korquad(path: Path, n: int, seed: int) -> None:
    """The answer is the word right after MARKER, somewhere in a paragraph of filler."""
    rng = random.Random(seed)
    paragraphs = []
    for index in range(n):
        before, after = sentence(rng, rng.randint(2, 10)), sentence(rng, rng.randint(2, 10))
        answer = rng.choice(ANSWERS)
        prefix = " ".join([*before, MARKER]) + " "
        context = prefix + " ".join([answer, *after])
        qa = {
            "id": f"q{index}",
            "question": " ".join([MARKER, *QUESTION_WORDS]),
            "answers": [{"text": answer, "answer_start": len(prefix)}],
        }
        paragraphs.append({"context": context, "qas": [qa]})
    data = {"version": "KorQuAD_v1.0_synthetic", "data": [{"title": "synthetic", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def registered_task(name: str) -> str:
    tasks = pytest.importorskip("reforbert.tasks")
    if not hasattr(tasks, "TASKS"):
        pytest.skip("the task registry is not available")
    if name not in tasks.TASKS:
        pytest.skip(f"task {name} is not registered")
    return name


def load_results(results_dir: Path, task: str) -> dict:
    return json.loads((results_dir / f"{task}.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ one run per head type


def test_sequence_classification_learns_token_presence(model_dir, tmp_path):
    task = registered_task("nsmc")
    write_nsmc(tmp_path / "ratings_train.txt", 320, seed=1)
    write_nsmc(tmp_path / "ratings_test.txt", 120, seed=2)
    results_dir = tmp_path / "results"
    code = main(
        [
            "finetune",
            task,
            "--model",
            str(model_dir),
            "--train",
            str(tmp_path / "ratings_train.txt"),
            "--eval",
            str(tmp_path / "ratings_test.txt"),
            "--results-dir",
            str(results_dir),
            "--epochs",
            "6",
            "--learning-rate",
            "5e-3",
            "--batch-size",
            "16",
            "--no-progress",
            # Grouped training batches must leave the evaluation in example order.
            "--group-by-length",
            "-o",
            str(tmp_path / "finetuned"),
        ]
    )
    assert code == 0
    results = load_results(results_dir, task)
    assert results["hyperparameters"]["batch_order"] == "grouped by length"
    # Chance is 50%.
    assert results["metrics"]["accuracy"] >= 85.0
    assert results["main_metric"] == "accuracy"
    assert results["split"]["kind"] == "test"
    assert results["split"]["eval_file"].endswith("ratings_test.txt")
    assert len(results["eval_file_sha256"]) == 64
    assert results["num_train_examples"] == 320 and results["num_eval_examples"] == 120
    assert results["steps"] == 120 == results["planned_steps"]
    assert results["hyperparameters"]["learning_rate"] == 5e-3
    assert results["hyperparameters"]["batch_size"] == 16
    assert results["hyperparameters"]["seed"] == 42
    # "auto" means bf16 autocast wherever the hardware has it (this CPU's AMX, a CUDA GPU).
    assert results["hyperparameters"]["bf16"] is resolve_bf16("auto", torch.cuda.is_available())
    assert results["model"]["hidden_size"] == 32 and results["model"]["num_hidden_layers"] == 2
    assert results["model"]["path"] == str(model_dir.resolve())
    matrix = results["confusion_matrix"]
    assert sum(map(sum, matrix)) == 120 and results["label_names"] == ["negative", "positive"]
    assert results["train_seconds"] > 0 and results["eval_seconds"] > 0
    assert results["device"]
    assert any("loss" in entry for entry in results["log_history"])
    saved = sorted(path.name for path in (tmp_path / "finetuned").iterdir())
    assert "model.safetensors" in saved and "config.json" in saved
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in saved)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "finetuned")
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}


def test_regression_learns_a_count_on_a_carved_dev_split(model_dir, tmp_path):
    task = registered_task("korsts")
    write_korsts(tmp_path / "sts-train.tsv", 320, seed=3)
    results = finetune(
        task,
        model_dir,
        tmp_path / "sts-train.tsv",
        dev_fraction=0.25,
        results_dir=tmp_path / "r",
        epochs=4,
        **TRAIN,
    )
    # Guessing gives a Spearman correlation near 0.
    assert results["metrics"]["spearman"] >= 60.0
    assert results["split"]["kind"] == "carved-dev"
    assert results["split"]["description"] == "carved dev of 25% of sts-train.tsv by seed 42"
    assert results["num_train_examples"] == 240 and results["num_eval_examples"] == 80
    assert results["head"] == "sequence-classification"
    assert "confusion_matrix" not in results
    assert load_results(tmp_path / "r", task)["metrics"] == results["metrics"]


def test_token_classification_learns_name_words(model_dir, tmp_path):
    task = registered_task("naver-ner")
    write_naver_ner(tmp_path / "train.tsv", 240, seed=4)
    write_naver_ner(tmp_path / "dev.tsv", 80, seed=5)
    results = finetune(
        task,
        model_dir,
        tmp_path / "train.tsv",
        tmp_path / "dev.tsv",
        results_dir=tmp_path / "r",
        epochs=4,
        **TRAIN,
    )
    # Tagging everything O scores 0 F1; tagging at random among 29 tags scores far below this.
    assert results["metrics"]["f1"] >= 80.0
    assert results["split"]["kind"] == "dev"
    assert results["head"] == "token-classification"


def test_question_answering_finds_the_word_after_the_marker(model_dir, tmp_path):
    task = registered_task("korquad")
    write_korquad(tmp_path / "train.json", 256, seed=6)
    write_korquad(tmp_path / "dev.json", 80, seed=7)
    results = finetune(
        task,
        model_dir,
        tmp_path / "train.json",
        tmp_path / "dev.json",
        results_dir=tmp_path / "r",
        epochs=4,
        **TRAIN,
    )
    # A random span in a paragraph of ~14 words is almost never exactly the answer.
    assert results["metrics"]["exact_match"] >= 60.0
    assert results["metrics"]["f1"] >= results["metrics"]["exact_match"]
    assert results["head"] == "question-answering"


# ------------------------------------------------------------------ stopping, limits, bad input


def test_time_budget_stops_training_early_and_still_evaluates(model_dir, tmp_path):
    task = registered_task("nsmc")
    write_nsmc(tmp_path / "train.txt", 64, seed=1)
    results = finetune(
        task,
        model_dir,
        tmp_path / "train.txt",
        dev_fraction=0.25,
        results_dir=tmp_path / "r",
        epochs=100,
        time_budget_minutes=1e-6,
        **TRAIN,
    )
    assert results["stopped_by_time_budget"] is True
    assert results["steps"] == 1 < results["planned_steps"] == 300
    # One step in, the score is still that of the 16 scored examples: the accuracy is the confusion
    # matrix's diagonal, whatever the model predicts.
    matrix = results["confusion_matrix"]
    assert sum(map(sum, matrix)) == 16
    assert results["metrics"]["accuracy"] == pytest.approx(100.0 * (matrix[0][0] + matrix[1][1]) / 16)
    assert results["num_eval_examples"] == 16
    assert (tmp_path / "r" / f"{task}.json").is_file()


def test_example_limits_and_max_steps(model_dir, tmp_path):
    task = registered_task("nsmc")
    write_nsmc(tmp_path / "train.txt", 100, seed=1)
    write_nsmc(tmp_path / "test.txt", 50, seed=2)
    results = finetune(
        task,
        model_dir,
        tmp_path / "train.txt",
        tmp_path / "test.txt",
        results_dir=tmp_path / "r",
        max_train_examples=40,
        max_eval_examples=10,
        max_steps=2,
        **TRAIN,
    )
    assert results["num_train_examples"] == 40 and results["num_eval_examples"] == 10
    assert results["steps"] == 2 and results["stopped_by_time_budget"] is False
    assert sum(map(sum, results["confusion_matrix"])) == 10


def test_attention_override_is_used_and_recorded(model_dir, tmp_path):
    """A model saved with LSH attention can be fine-tuned with another backend over the same weights."""
    task = registered_task("nsmc")
    write_nsmc(tmp_path / "train.txt", 40, seed=1)
    write_nsmc(tmp_path / "test.txt", 20, seed=2)
    for backend in ("full", "lsh"):
        results = finetune(
            task,
            model_dir,
            tmp_path / "train.txt",
            tmp_path / "test.txt",
            results_dir=tmp_path / backend,
            max_steps=1,
            attention=backend,
            **TRAIN,
        )
        assert results["model"]["attention_backend"] == backend


def test_bad_input_is_refused_with_the_culprit_named(model_dir, tmp_path, capsys):
    task = registered_task("nsmc")
    write_nsmc(tmp_path / "train.txt", 20, seed=1)
    train = tmp_path / "train.txt"
    with pytest.raises(ReforBertInputError, match="no-such-model: model folder not found"):
        finetune(task, tmp_path / "no-such-model", train, dev_fraction=0.2, results_dir=tmp_path / "r")
    with pytest.raises(ReforBertInputError, match="missing.txt: train file not found"):
        finetune(task, model_dir, tmp_path / "missing.txt", dev_fraction=0.2, results_dir=tmp_path / "r")
    with pytest.raises(ReforBertInputError, match="absent.txt: eval file not found"):
        finetune(task, model_dir, train, tmp_path / "absent.txt", results_dir=tmp_path / "r")
    with pytest.raises(ReforBertInputError, match="--dev-fraction"):
        finetune(task, model_dir, train, results_dir=tmp_path / "r")
    with pytest.raises(ReforBertInputError, match="not both"):
        finetune(task, model_dir, train, train, dev_fraction=0.2, results_dir=tmp_path / "r")
    with pytest.raises(ReforBertInputError, match="vocab: tokenizer folder not found"):
        finetune(
            task,
            model_dir,
            train,
            tokenizer_dir=tmp_path / "vocab",
            dev_fraction=0.2,
            results_dir=tmp_path / "r",
        )
    for setting, flag in (
        ("time_budget_minutes", "--time-budget-minutes"),
        ("max_seq_length", "--max-seq-len"),
    ):
        with pytest.raises(ReforBertInputError, match=f"{flag} must be positive, got 0"):
            finetune(task, model_dir, train, dev_fraction=0.2, results_dir=tmp_path / "r", **{setting: 0})
    with pytest.raises(ReforBertInputError, match="unknown task 'no-such-task'; choose one of: .*nsmc"):
        finetune("no-such-task", model_dir, train, dev_fraction=0.2, results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()

    # An existing results file is never replaced silently.
    (tmp_path / "r").mkdir()
    existing = tmp_path / "r" / f"{task}.json"
    existing.write_text("{}", encoding="utf-8")
    code = main(
        [
            "finetune",
            task,
            "--model",
            str(model_dir),
            "--train",
            str(train),
            "--dev-fraction",
            "0.2",
            "--results-dir",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_text(encoding="utf-8") == "{}"


# ------------------------------------------------------------------ small parts


def test_collator_pads_each_head_type():
    collate = PaddingCollator(pad_token_id=0)
    batch = collate(
        [
            {"input_ids": [5, 9, 4], "token_type_ids": [0, 0, 0], "labels": [-100, 3, -100]},
            {"input_ids": [5, 4], "token_type_ids": [0, 0], "labels": [-100, -100]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 9, 4], [5, 4, 0]]
    assert batch["labels"].tolist() == [[-100, 3, -100], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    regression = collate([{"input_ids": [5], "labels": 1.5}, {"input_ids": [5, 4], "labels": 0.0}])
    assert regression["labels"].dtype == torch.float32
    spans = collate([{"input_ids": [5], "start_positions": 0, "end_positions": 0}])
    assert spans["start_positions"].dtype == torch.long


@pytest.mark.parametrize("group_by_length", [True, False])
def test_grouped_batches_cut_padding_and_cover_every_example(model_dir, tmp_path, group_by_length):
    from transformers import Trainer

    from reforbert.finetuning import FeatureDataset, training_arguments

    rng = random.Random(0)
    # Lengths spread as review lengths are: most short, a few long.
    features = [
        {"input_ids": [5] * min(120, int(rng.expovariate(1 / 20)) + 2), "labels": index % 2}
        for index in range(640)
    ]
    args = training_arguments(
        str(tmp_path),
        epochs=1,
        max_steps=None,
        learning_rate=1e-3,
        per_device_batch=16,
        use_cuda=False,
        use_bf16=False,
        seed=1,
        logging_steps=None,
        progress=False,
        group_by_length=group_by_length,
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    trainer = Trainer(
        model=model, args=args, data_collator=PaddingCollator(0), train_dataset=FeatureDataset(features)
    )
    batches = list(trainer.get_train_dataloader())
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    computed = sum(batch["input_ids"].numel() for batch in batches)
    assert real == sum(len(feature["input_ids"]) for feature in features)  # every example once
    if group_by_length:
        assert computed < 1.3 * real
    else:
        assert computed > 2 * real  # what random batches of these lengths cost


def test_subsample_is_seeded_and_keeps_file_order():
    items = list(range(100))
    first = subsample(items, 10, seed=42)
    assert first == subsample(items, 10, seed=42) == sorted(first)
    assert first != subsample(items, 10, seed=7)
    assert subsample(items, None, seed=42) == items


def test_a_checkpoint_stored_in_fp16_is_fine_tuned_in_fp32(model_dir, tmp_path):
    # The released checkpoint is stored in fp16 to stay small; transformers would load it, and the
    # Trainer would then train it, in fp16 unless the loader asks for fp32 master weights.
    from reforbert.finetuning import load_model

    half = tmp_path / "half"
    ReforBertForPreTraining.from_pretrained(model_dir).half().save_pretrained(half)
    stored = AutoModelForSequenceClassification.from_pretrained(half, num_labels=2)
    assert stored.dtype == torch.float16  # what a plain load gives, the case this guards against
    model = load_model(get_task("nsmc"), half)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
