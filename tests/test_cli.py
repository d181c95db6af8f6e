"""The command-line vocabulary: one spelling per idea, a help sentence for every flag, an example in
every ``--help``, and the older spellings still accepted (with a note) but hidden."""

from __future__ import annotations

import argparse
import re

import pytest

from reforbert import cli

# The commands whose modules live in reforbert.data, reforbert.tasks and reforbert.finetuning.
COMMANDS = ("corpus", "vocab", "pretraining-data", "finetune", "data")


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser([name])
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices[name]


def parsers_of(name: str) -> list[argparse.ArgumentParser]:
    """The command's parser and those of its actions (``reforbert data download``)."""
    parser = command_parser(name)
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *(child for action in nested for child in action.choices.values())]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_has_a_help_sentence_and_help_ends_with_an_example(name: str) -> None:
    for parser in parsers_of(name):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help is argparse.SUPPRESS:
                continue  # a deprecated spelling
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            sentence = action.help % {"default": action.default}
            assert sentence[0].isupper() and sentence.endswith("."), (name, action.dest, sentence)
        text = parser.format_help()
        example = text.rstrip().rsplit("example:\n", 1)
        assert len(example) == 2 and example[1].lstrip().startswith("reforbert "), text


@pytest.mark.parametrize(
    ("argv", "dest", "canonical"),
    [
        (["finetune", "nsmc", "--model", "m", "--train", "t", "--output-dir", "out"], "output", "--output"),
        (["finetune", "nsmc", "--model", "m", "--train", "t", "--time-budget", "5"], "time_budget_minutes",
         "--time-budget-minutes"),
        (["finetune", "nsmc", "--model", "m", "--train", "t", "--max-seq-length", "64"], "max_seq_len",
         "--max-seq-len"),
    ],
)  # fmt: skip
def test_old_spellings_still_work_with_a_note(argv, dest, canonical, capsys) -> None:
    old = next(arg for arg in argv if arg.startswith("--") and arg not in ("--model", "--train"))
    args = cli.build_parser(argv).parse_args(argv)
    value = argv[argv.index(old) + 1]
    assert str(getattr(args, dest)) == str(type(getattr(args, dest))(value))
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and f"{old} is deprecated" in note and f"use {canonical}" in note
    # The canonical spelling says nothing, and the old one is not advertised.
    canonical_argv = [canonical if arg == old else arg for arg in argv]
    assert getattr(cli.build_parser(canonical_argv).parse_args(canonical_argv), dest) == getattr(args, dest)
    assert capsys.readouterr().err == ""
    assert not re.search(re.escape(old) + r"(?![\w-])", command_parser("finetune").format_help())


def test_canonical_flags_are_shared_by_the_commands() -> None:
    def flags(name: str) -> set[str]:
        return {flag for parser in parsers_of(name) for a in parser._actions for flag in a.option_strings
                if a.help is not argparse.SUPPRESS}  # fmt: skip

    for name in ("corpus", "vocab", "pretraining-data", "finetune"):
        assert {"--output", "-o"} <= flags(name)
    assert {"--output", "-o"} <= flags("data")
    assert "--max-seq-len" in flags("finetune") and "--max-seq-len" in flags("pretraining-data")
    assert "--time-budget-minutes" in flags("finetune")
    for name in COMMANDS:
        assert not {"--output-dir", "--max-seq-length", "--time-budget"} & flags(name)
    # Both downloaders take the same two checksum flags.
    for name in ("corpus", "data"):
        assert {"--allow-unverified", "--accept-checksum-mismatch"} <= flags(name)


def test_attention_choices_come_from_the_configuration() -> None:
    from reforbert.configuration_reforbert import ATTENTION_BACKENDS

    attention = next(a for a in command_parser("finetune")._actions if "--attention" in a.option_strings)
    assert tuple(attention.choices) == ATTENTION_BACKENDS
