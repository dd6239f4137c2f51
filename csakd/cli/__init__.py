"""The `csakd` command line. Each subcommand lives in the module that does its job and registers itself
through `register(subparsers)`; errors in user input end with one clear line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import sys

# (name, module): the module defines register(subparsers), adding a parser whose defaults set func(args).
COMMANDS = [
    ("synth", "csakd.cli.synth"),
    ("train", "csakd.cli.train"),
    ("eval", "csakd.cli.eval"),
    ("fuse", "csakd.cli.fuse"),
    ("demo", "csakd.cli.demo"),
    ("info", "csakd.cli.info"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csakd", description="Hyperspectral/multispectral image fusion with CSAKD.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # subcommand not part of this build
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, PermissionError, OSError, RuntimeError) as exc:
        print(f"csakd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"csakd {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
