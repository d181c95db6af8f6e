"""PretrainingArguments: the command line generated from it, recipes, and the resume invariants."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from reforbert import cli
from reforbert.errors import ReforBertInputError
from reforbert.pretraining_arguments import (
    RECIPES,
    PretrainingArguments,
    arguments_from_namespace,
    changed_invariants,
)

REQUIRED = ["--data", "d", "--vocab", "v", "--output", "o"]


def parse(*argv: str) -> PretrainingArguments:
    full = ["pretrain", *REQUIRED, *argv]
    return arguments_from_namespace(cli.build_parser(full).parse_args(full))


def pretrain_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser(["pretrain"])
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices["pretrain"]


def test_every_field_is_a_flag_with_a_help_sentence_and_help_ends_with_an_example() -> None:
    parser = pretrain_parser()
    visible = [a for a in parser._actions if a.help is not argparse.SUPPRESS and a.dest != "help"]
    assert {a.dest for a in visible} == {f.name for f in dataclasses.fields(PretrainingArguments)}
    for action in visible:
        sentence = action.help % {}
        assert sentence[0].isupper() and sentence.endswith("."), (action.dest, sentence)
    example = parser.format_help().rstrip().rsplit("example:\n", 1)[1]
    assert example.lstrip().startswith("reforbert pretrain ")


def test_flags_not_given_keep_the_dataclass_defaults() -> None:
    assert parse() == PretrainingArguments(data="d", vocab="v", output="o")


def test_canonical_and_deprecated_spellings(capsys: pytest.CaptureFixture) -> None:
    args = parse("--max-seq-len", "128", "--time-budget-minutes", "2.5", "--no-nsp", "--whole-word-mask")
    assert (args.max_seq_len, args.time_budget_minutes, args.nsp, args.whole_word_mask) == (
        128,
        2.5,
        False,
        True,
    )
    assert capsys.readouterr().err == ""
    argv = ["pretrain", "--data", "d", "--vocab", "v", "--output-dir", "old", "--max-seq-length", "64"]
    args = arguments_from_namespace(cli.build_parser(argv).parse_args(argv))
    assert (args.output, args.max_seq_len) == ("old", 64)
    notes = capsys.readouterr().err
    assert "--output-dir is deprecated" in notes and "use --output" in notes and "use --max-seq-len" in notes
    full = ["pretrain", "--data", "d", "--vocab", "v", "-o", "short"]
    assert arguments_from_namespace(cli.build_parser(full).parse_args(full)).output == "short"


def test_a_recipe_supplies_defaults_that_explicit_flags_override() -> None:
    recipe = RECIPES["budget-stage2-len128"]
    args = parse(
        "--recipe", "budget-stage2-len128", "--learning-rate", "7e-4", "--config", "hidden_dropout_prob=0.1"
    )
    assert args.recipe == "budget-stage2-len128"
    assert recipe["learning_rate"] != 7e-4 and args.learning_rate == 7e-4  # given
    assert (args.max_seq_len, args.global_batch_size, args.warmup_steps) == (
        recipe["max_seq_len"],
        recipe["global_batch_size"],
        recipe["warmup_steps"],
    )
    assert args.model_config_overrides() == {
        "hidden_dropout_prob": 0.1,  # --config beats the recipe's value for the same field
        "attention_backend": "full",
        "reversible": False,
    }
    # An explicit --config for a field that the recipe sets with a shortcut flag wins too.
    assert (
        parse(
            "--recipe", "budget-stage2-len128", "--config", "attention_backend=lsh"
        ).model_config_overrides()["attention_backend"]
        == "lsh"
    )
    assert parse("--recipe", "budget-stage2-len128", "--reversible").reversible is True
    assert "compile" not in recipe and parse("--recipe", "budget-stage2-len128").compile is False
    assert parse("--recipe", "budget-stage2-len128", "--compile").compile is True


def test_an_unknown_recipe_or_a_bad_value_is_a_one_line_error() -> None:
    with pytest.raises(ReforBertInputError, match="unknown recipe 'fast'"):
        PretrainingArguments.resolve(recipe="fast")
    with pytest.raises(ReforBertInputError, match="--micro-batch-size must be at least 1"):
        PretrainingArguments(data="d", vocab="v", output="o", micro_batch_size=0).validate()
    with pytest.raises(ReforBertInputError, match="KEY=VALUE"):
        parse("--config", "hidden_dropout_prob")


def test_resume_invariants_treat_settings_older_runs_did_not_record_as_their_default() -> None:
    older = {
        "global_batch_size": 4,
        "seed": 3,
        "mlm_probability": 0.15,
        "nsp": True,
        "max_seq_len": 64,
        "data": "/d",
    }
    assert changed_invariants(older, {**older, "whole_word_mask": False, "learning_rate": 1.0}) == []
    assert changed_invariants(older, {**older, "whole_word_mask": True}) == ["whole_word_mask: False -> True"]
    assert changed_invariants(older, {**older, "whole_word_mask": False, "seed": 4}) == ["seed: 3 -> 4"]
