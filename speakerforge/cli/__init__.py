"""`speakerforge <command>`: one entry point; each command is a thin layer over a library function.

Commands import their library modules lazily so that `speakerforge validate` does not pay for importing torch.
The error contract: logs and progress bars go to stderr; a command that fails ends with exactly one error line,
`speakerforge <command>: error: ...`, the last line on stderr, and exits 2 (user errors: `SpeakerforgeError`, an
`OSError` about a file, bad arguments, out of memory; `validate` exits 1 when it found problems). SIGTERM is treated
as Ctrl-C (clean-up runs, exit 143). Anything else is a bug: still one line, exit 70, and `--debug` shows the
traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence

from speakerforge.errors import SpeakerforgeError, describe_os_error

log = logging.getLogger("speakerforge")

EXIT_USER_ERROR = 2
EXIT_BUG = 70  # sysexits EX_SOFTWARE: not the user's input

# name -> (help, add_arguments, run). Filled by the `command` decorator below.
_COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]
] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def deco(run: Callable[[argparse.Namespace], int | None]):
        _COMMANDS[name] = (help, add_arguments, run)
        return run

    return deco


# --------------------------------------------------------------------------------------------------------------
class UsageError(Exception):
    """A bad command line: argparse's message, printed as the one error line like every other user error."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


def finite_float(text: str) -> float:
    """`type=float` that refuses nan and inf (every float option is a finite number)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line (no usage block), and no nan/inf for a float option."""

    def error(self, message: str):
        raise UsageError(self.prog, message)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") is float:
            kwargs["type"] = finite_float
        return super().add_argument(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; exposed so tests and docs can introspect the commands."""
    _import_command_modules()
    parser = Parser(prog="speakerforge", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, _run) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(sp)
    return parser


# One module per command group, in `--help` order; each registers its commands with `@command` on import.
COMMAND_GROUPS = ("data", "train", "eval", "infer", "models", "asr", "demo")


def _import_command_modules() -> None:
    """Import every command group (their library modules are imported only when a command runs)."""
    import importlib

    for group in COMMAND_GROUPS:
        importlib.import_module(f"speakerforge.cli.{group}")


def _close_progress_bars() -> None:
    """Close progress bars an error left open, so that the error line starts a line of its own."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    for bar in list(getattr(std.tqdm, "_instances", ())):
        bar.close()


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (a multi-line message would break the one-error-line contract)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _is_out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, torch.OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and (type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc))
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what job schedulers send), raised where Ctrl-C would be so that the same clean-up runs."""


_SIGTERM_SEEN = False


def _on_sigterm(signum: int, frame: object) -> None:
    global _SIGTERM_SEEN
    _SIGTERM_SEEN = True
    raise _Terminated()


def _terminated_meanwhile(exc: BaseException) -> bool:
    """A SIGTERM to the process group can surface first as another error: PyTorch's DataLoader reports its
    terminated workers ("killed by signal: Terminated") before our handler runs. That is a termination, not a bug."""
    return _SIGTERM_SEEN or "killed by signal: Terminated" in str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # argparse reports these from the top-level parser; name the command they were given to
            raise UsageError(f"speakerforge {args.command}", f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as exc:
        who = " ".join(exc.prog.split()[:2])  # `speakerforge prepare synthetic` -> `speakerforge prepare`
        print(f"{who}: error: {_one_line(exc)} (see {exc.prog} --help)", file=sys.stderr)
        return EXIT_USER_ERROR
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    console = logging.StreamHandler()
    console.setLevel(level)  # --quiet holds for the console even where a command logs INFO to its own log file
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[console]
    )
    _help, _add, run = _COMMANDS[args.command]
    global _SIGTERM_SEEN
    _SIGTERM_SEEN = False
    previous = _install_sigterm()
    try:
        code = run(args)
    except SpeakerforgeError as exc:
        if args.debug:
            raise
        return _fail(args.command, _one_line(exc))
    except OSError as exc:
        # A file the user named cannot be read or written (a file where a folder should be, permissions, full
        # disk): their environment, not a bug. OSErrors without a file name are reported as bugs below.
        if args.debug:
            raise
        if exc.filename is None:
            return _fail(
                args.command, f"internal error ({type(exc).__name__}: {_one_line(exc)}); --debug shows where", EXIT_BUG
            )
        return _fail(args.command, describe_os_error(exc))
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        how = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        print(f"speakerforge {args.command}: {how}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except Exception as exc:
        if args.debug:
            raise
        if _terminated_meanwhile(exc):
            _close_progress_bars()
            print(f"speakerforge {args.command}: terminated (SIGTERM)", file=sys.stderr)
            return 143
        if _is_out_of_memory(exc):
            return _fail(args.command, f"out of memory ({_one_line(exc)[:300]}); use smaller inputs or settings")
        return _fail(
            args.command,
            f"internal error ({type(exc).__name__}: {_one_line(exc)[:300]}); this is a bug, --debug shows the "
            "traceback",
            EXIT_BUG,
        )
    finally:
        _restore_sigterm(previous)
    return int(code or 0)


def _fail(command: str, message: str, code: int = EXIT_USER_ERROR) -> int:
    """The one error line, last on stderr: progress bars are closed first so it starts a line of its own."""
    _close_progress_bars()
    for handler in logging.getLogger().handlers:
        handler.flush()
    print(f"speakerforge {command}: error: {message}", file=sys.stderr)
    return code


def _install_sigterm() -> object:
    """SIGTERM -> `_Terminated` for the duration of a command (only the main thread may set handlers)."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. a test runner's worker thread)
        return None


def _restore_sigterm(previous: object) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


if __name__ == "__main__":  # `python -m speakerforge.cli`: run the package's module, where commands register
    from speakerforge.cli import main as _package_main

    sys.exit(_package_main())
