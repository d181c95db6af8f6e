"""Fuzzing the model folder that fine-tuning reads and the checkpoint folder that --resume reads.

A model folder is what ``reforbert pretrain`` leaves in RUN/model: config.json, model.safetensors and
the tokenizer files. One of its files is corrupted (or deleted) and the folder is loaded as
``reforbert finetune`` loads it; the model and tokenizer must then work together on a sentence, or
loading must end in one ``ReforBertInputError`` naming the folder or the file.

The two cases users met as tracebacks are pinned down end to end: KorQuAD training data whose answers
all miss their ``answer_start``, and a model.safetensors that is not a safetensors file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fuzzing import (
    apply_file_corruptions,
    assert_one_line_error,
    error_lines,
    file_corruptions,
    outcome,
    run_cli,
    run_fuzz,
)
from hypothesis import strategies as st
from test_finetuning import write_korquad, write_nsmc

from reforbert import ReforBertConfig
from reforbert.cli import main as cli_main
from reforbert.errors import ReforBertInputError
from reforbert.finetuning import check_tokenizer_fits_model, finetune, load_model, load_tokenizer
from reforbert.modeling_reforbert import ReforBertForPreTraining
from reforbert.tasks import get_task

TASKS_BY_HEAD = ("nsmc", "naver-ner", "korquad")


def tiny_config(vocab_size: int) -> ReforBertConfig:
    return ReforBertConfig.from_preset(
        "tiny",
        vocab_size=vocab_size,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        axial_position_shape=(8, 16),
        attention_backend="full",
    )


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reforbert.data.vocab import train_vocab

    folder = tmp_path_factory.mktemp("fuzz-vocab")
    words = ["하늘", "바다", "사과", "포도", "정답은", "무엇", "좋다", "같다", "철수", "영희"]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(8)) + "." for i in range(200)]
    (folder / "corpus.txt").write_text("제목\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return train_vocab([folder / "corpus.txt"], folder / "vocab", vocab_size=40, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> Path:
    """RUN/model as pretraining writes it: safetensors weights, config.json, the vocabulary's files."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("fuzz-run") / "model"
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(vocab_dir / "sentencepiece.model"))
    torch.manual_seed(0)
    ReforBertForPreTraining(tiny_config(pieces.get_piece_size())).save_pretrained(folder)
    for entry in vocab_dir.iterdir():
        shutil.copy2(entry, folder / entry.name)
    return folder


def load_and_run(task_name: str, folder: Path) -> None:
    """Load as fine-tuning does, then one forward pass proves that what loaded works."""
    task = get_task(task_name)
    tokenizer = load_tokenizer(folder)
    model = load_model(task, folder)
    check_tokenizer_fits_model(tokenizer, model, folder)
    inputs = tokenizer(["사과 정답은 하늘"], ["무엇 좋다"], return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    logits = output.start_logits if task.head == "question-answering" else output.logits
    assert logits.shape[:2] == (1, inputs["input_ids"].shape[1]) or logits.shape == (1, task.num_labels)


def one_file_corruptions(source: Path) -> st.SearchStrategy:
    """(file name, corruptions) for one file of ``source``; corruptions None means the file is deleted."""
    names = sorted(entry.name for entry in source.iterdir())
    return st.sampled_from(names).flatmap(
        lambda name: st.tuples(
            st.just(name), st.one_of(st.just(None), file_corruptions(json_file=name.endswith(".json")))
        )
    )


def copy_with_one_file_corrupted(source: Path, folder: Path, name: str, corruptions) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    if corruptions is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(apply_file_corruptions((source / name).read_bytes(), corruptions))


def test_fuzz_model_folder(tmp_path: Path, model_dir: Path) -> None:
    folder = tmp_path / "model"

    def case(drawn: tuple) -> None:
        (name, corruptions), task_name = drawn
        copy_with_one_file_corrupted(model_dir, folder, name, corruptions)
        outcome(lambda: load_and_run(task_name, folder), folder)

    run_fuzz(st.tuples(one_file_corruptions(model_dir), st.sampled_from(TASKS_BY_HEAD)), case)


# ------------------------------------------------------------------ checkpoint folder


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    from reforbert.checkpointing import TrainingState, save_checkpoint

    run_dir = tmp_path_factory.mktemp("fuzz-checkpoint")
    objects = fresh_training_objects(model_dir)
    objects.model(input_ids=torch.tensor([[5, 9, 10, 4]])).prediction_logits.sum().backward()
    objects.optimizer.step()
    objects.scheduler.step()
    state = TrainingState(step=1, epoch=0, position=4, tokens_seen=16, elapsed_seconds=0.5)
    return save_checkpoint(run_dir, state, objects, {"seed": 3, "global_batch_size": 4}, keep=0)


def fresh_training_objects(model_dir: Path):
    from reforbert.checkpointing import TrainingObjects

    config = ReforBertConfig.from_pretrained(str(model_dir))
    torch.manual_seed(1)
    model = ReforBertForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return TrainingObjects(model, optimizer, scheduler)


def test_fuzz_checkpoint_folder(tmp_path: Path, checkpoint_dir: Path, model_dir: Path) -> None:
    from reforbert.checkpointing import load_checkpoint

    folder = tmp_path / checkpoint_dir.name

    def case(drawn: tuple) -> None:
        copy_with_one_file_corrupted(checkpoint_dir, folder, *drawn)
        objects = fresh_training_objects(model_dir)
        state, _ = outcome(lambda: load_checkpoint(folder, objects), folder)
        if state is not None:
            for field in ("step", "epoch", "position", "tokens_seen"):
                assert isinstance(getattr(state, field), int) and getattr(state, field) >= 0, state

    run_fuzz(one_file_corruptions(checkpoint_dir), case)


# ------------------------------------------------------------------ the two cases met as tracebacks


def write_misaligned_korquad(path: Path) -> None:
    """A KorQuAD file whose every answer_start points past the answer."""
    write_korquad(path, 6, seed=2)
    document = json.loads(path.read_text(encoding="utf-8"))
    for paragraph in document["data"][0]["paragraphs"]:
        for qa in paragraph["qas"]:
            qa["answers"][0]["answer_start"] += 1
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


def test_korquad_with_no_aligned_answer_says_why_nothing_is_left(tmp_path: Path, model_dir: Path) -> None:
    train = tmp_path / "KorQuAD_v1.0_train.json"
    write_misaligned_korquad(train)
    with pytest.raises(ReforBertInputError) as caught:
        finetune("korquad", model_dir, train, train, results_dir=tmp_path / "results", progress=False)
    message = str(caught.value)
    assert message.startswith(f"{train}: nothing to train on: all 6 training examples were dropped")
    assert "6 whose answer text is not at its answer_start" in message
    assert not (tmp_path / "results").exists()


def test_corrupt_safetensors_is_one_line_error(tmp_path: Path, model_dir: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    train = tmp_path / "ratings_train.txt"
    write_nsmc(train, 8, seed=0)
    with pytest.raises(ReforBertInputError, match="model.safetensors"):
        finetune("nsmc", folder, train, dev_fraction=0.25, results_dir=tmp_path / "results", progress=False)
    assert not (tmp_path / "results").exists()


def test_cli_named_cases_exit_2_with_one_line(tmp_path: Path, model_dir: Path, capsys) -> None:
    train = tmp_path / "KorQuAD_v1.0_train.json"
    write_misaligned_korquad(train)
    results = tmp_path / "results"
    result = run_cli(
        "finetune", "korquad", "--model", str(model_dir), "--train", str(train), "--eval", str(train),
        "--results-dir", str(results), "--no-progress",
    )  # fmt: skip
    assert_one_line_error(result, "finetune", str(train), "nothing to train on")
    # The corrupt weights in-process: the same command-line path, without a second interpreter's start.
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    nsmc = tmp_path / "ratings_train.txt"
    write_nsmc(nsmc, 8, seed=0)
    code = cli_main(
        ["finetune", "nsmc", "--model", str(folder), "--train", str(nsmc), "--dev-fraction", "0.25",
         "--results-dir", str(results), "--no-progress"]
    )  # fmt: skip
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"reforbert finetune: error: {folder / 'model.safetensors'}: "), lines[0]
    assert not results.exists()
