"""The ``reforbert`` command: one subcommand per stage of the pipeline.

Each subcommand lives in its own module, which exposes ``configure_parser(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``reforbert --help``
stays fast and a broken optional stage cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reforbert.errors import ReforBertInputError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("reforbert.demo", "Fine-tune the released checkpoint on a sentiment sample, or --from-scratch."),
    "corpus": ("reforbert.data.corpus", "Turn a Wikipedia dump or WikiExtractor output into clean text."),
    "vocab": ("reforbert.data.vocab", "Train the SentencePiece vocabulary (8000 pieces + 7 specials)."),
    "pretraining-data": ("reforbert.data.pretraining_data", "Make MLM + NSP pretraining instances."),
    "pretrain": ("reforbert.pretraining", "Pretrain ReforBertForPreTraining on MLM + NSP."),
    "plot": ("reforbert.plotting", "Render a run's loss and accuracy curves to PNG."),
    "finetune": ("reforbert.finetuning", "Fine-tune and evaluate on one of the Korean benchmarks."),
    "report": ("reforbert.report", "Render the results table from results/*.json."),
    "data": ("reforbert.tasks.download", "Download benchmark files and verify their checksums."),
}
# Commands that train a model: on the CPU they keep freed memory for reuse (reforbert.allocator).
TRAINING_COMMANDS = ("demo", "pretrain", "finetune")


class _DeprecatedSpelling(argparse.Action):
    """Stores its value under the canonical flag's name and says on stderr which spelling to use."""

    def __init__(self, option_strings: list[str], dest: str, canonical: str, **kwargs) -> None:
        self.canonical = canonical
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"{parser.prog}: note: {option_string} is deprecated and will be removed; use {self.canonical}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, canonical: argparse.Action, *old: str) -> None:
    """Keep accepting ``old`` spellings of the flag ``canonical`` (an ``add_argument`` result) for
    one more release, hidden from ``--help``."""
    parser.add_argument(
        *old,
        dest=canonical.dest,
        type=canonical.type,
        nargs=canonical.nargs,
        metavar=canonical.metavar,
        action=_DeprecatedSpelling,
        canonical=canonical.option_strings[0],
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def add_example(parser: argparse.ArgumentParser, *command_lines: str) -> None:
    """End the command's ``--help`` with example command lines, printed as written."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "example:\n" + "\n".join(f"  {line}" for line in command_lines)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reforbert", description="ReforBERT: a Korean BERT on the Reformer."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.configure_parser(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    if args.command in TRAINING_COMMANDS:
        from reforbert.allocator import keep_freed_memory_when_training_on_cpu

        keep_freed_memory_when_training_on_cpu()
    try:
        return int(args.run(args) or 0)
    except ReforBertInputError as error:
        print(f"reforbert {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reforbert {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
