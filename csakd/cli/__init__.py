"""The `csakd` command line. Each subcommand lives in its own module here and registers itself through
`register(subparsers)`; only the module of the command being run is imported (so `csakd --help` answers at
once). Errors in user input end with one clear line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import sys

# (name, module, one-line help): the module defines register(subparsers), adding a parser whose defaults set
# func(args); the help here is what `csakd --help` lists without importing it.
COMMANDS = [
    ("synth", "csakd.cli.synth", "write a fusion dataset (LR-HSI, HR-MSI, HR-HSI) from scenes or cubes"),
    ("train", "csakd.cli.train", "train a teacher and a student with online distillation"),
    ("eval", "csakd.cli.eval", "evaluate a checkpoint (and baselines) with PSNR/SAM/RMSE/ERGAS/SSIM"),
    ("fuse", "csakd.cli.fuse", "fuse an LR-HSI and an HR-MSI file of any size with a trained network"),
    ("export", "csakd.cli.export", "export a trained network to ONNX or torch.export (.pt2), verified"),
    ("demo", "csakd.cli.demo", "the whole pipeline on generated scenes, with a report (a few minutes on a CPU)"),
    ("info", "csakd.cli.info", "print versions, devices, available backends and the checks behind 'auto'"),
]


def _command(argv) -> str | None:
    """The subcommand named on the command line, if any (the first argument that is not an option)."""
    names = {name for name, _, _ in COMMANDS}
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with `only` the parser where just that command is registered in full."""
    parser = argparse.ArgumentParser(
        prog="csakd", description="Hyperspectral/multispectral image fusion with CSAKD (docs/README.md).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, text in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help=text)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # subcommand not part of this build
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    args = build_parser(only=command or "").parse_args(argv)
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
