"""`speakerforge <command>`: one entry point; each command is a thin layer over a library function.

Commands import their library modules lazily so that `speakerforge validate` does not pay for importing torch.
User errors (`SpeakerforgeError`, and an `OSError` about a named file) become one line on stderr and a non-zero exit;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from speakerforge.errors import SpeakerforgeError, describe_os_error

log = logging.getLogger("speakerforge")

EXIT_USER_ERROR = 2

# name -> (help, add_arguments, run). Filled by the `command` decorator below.
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def deco(run: Callable[[argparse.Namespace], int | None]):
        _COMMANDS[name] = (help, add_arguments, run)
        return run

    return deco


# --------------------------------------------------------------------------------------------------------------
# validate
def _args_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="3D-Speaker CSV, Kaldi data dir, or JSONL")
    p.add_argument("--deep", action="store_true", help="decode every file (finite samples, true length)")


@command("validate", "check manifests row by row; exit 1 when any problem was found", _args_validate)
def _run_validate(args: argparse.Namespace) -> int:
    from speakerforge.data.validate import validate_manifests

    report = validate_manifests(args.manifests, deep=args.deep)
    for problem in report.problems:
        print(problem, file=sys.stdout)
    print(report.summary(), file=sys.stdout)
    if not report.problems:
        return 0
    # The report (stdout) lists every problem; the verdict on stderr is the one error line every command gives.
    n = len(report.problems)
    more = f" (and {n - 1} more, listed above)" if n > 1 else ""
    print(f"speakerforge validate: error: {report.problems[0]}{more}", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; exposed so tests and docs can introspect the commands."""
    _import_command_modules()
    parser = argparse.ArgumentParser(prog="speakerforge", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, _run) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(sp)
    return parser


def _import_command_modules() -> None:
    """Commands that live beside their library (large argument sets) register themselves on import."""
    import importlib

    for mod in (
        "speakerforge.cli_data",
        "speakerforge.cli_models",
        "speakerforge.cli_train",
        "speakerforge.cli_eval",
        "speakerforge.cli_infer",
        "speakerforge.cli_demo",
        "speakerforge.cli_ssl",
        "speakerforge.cli_asr",
    ):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def _close_progress_bars() -> None:
    """Close progress bars an error left open, so that the error line starts a line of its own."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    for bar in list(getattr(std.tqdm, "_instances", ())):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    console = logging.StreamHandler()
    console.setLevel(level)  # --quiet holds for the console even where a command logs INFO to its own log file
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[console]
    )
    _help, _add, run = _COMMANDS[args.command]
    try:
        code = run(args)
    except SpeakerforgeError as exc:
        if args.debug:
            raise
        _close_progress_bars()
        print(f"speakerforge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # A file the user named cannot be read or written (a file where a folder should be, permissions, full
        # disk): their environment, not a bug. OSErrors without a file name stay tracebacks.
        if args.debug or exc.filename is None:
            raise
        _close_progress_bars()
        print(f"speakerforge {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"speakerforge {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # `python -m speakerforge.cli`: run the package's module, where commands register
    from speakerforge.cli import main as _package_main

    sys.exit(_package_main())
