"""The command-line boundary every armor-* command shares: one line per error, never a traceback.

`ArgumentParser` prints a usage error as one line (and exit code 2); `boundary(prog, fn)`
runs a command's body and turns what escapes it into one line on stderr and an exit code:

    InputError, SamplingError, usage errors      2   (the user's input is wrong)
    any other ArmorError                         1   (a bundle, checkpoint, device or gate)
    OSError (disk full, permissions, a file)     1
    KeyboardInterrupt (Ctrl-C) / SIGTERM         130 / 143
    anything else                                1   (an internal error: one line, and the
                                                      traceback with ARMOR_DEBUG=1)

Argument types for counts and sizes live here too. Torch-free; it knows exit codes and
messages, nothing about models.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

from runtime.errors import ArmorError, InputError, SamplingError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


def number(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number in [minimum, maximum]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be in [{minimum}, {maximum}], got {value:g}")
        return value
    parse.__name__ = "number"
    return parse


def writable_folder(path) -> None:
    """Refuse, before any work, an output folder that cannot be created or written."""
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} is a file; give a folder")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out {path}: {probe} is not writable")


def _sigterm(signum, frame):
    raise KeyboardInterrupt("terminated")


def boundary(prog: str, body: Callable[[], int]) -> int:
    """Run `body()` and return its exit code; whatever escapes it becomes one line and a code."""
    previous = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        return body()
    except (InputError, SamplingError) as e:
        return _line(prog, str(e), 2)
    except ArmorError as e:
        return _line(prog, str(e), 1)
    except KeyboardInterrupt as e:
        terminated = str(e) == "terminated"
        return _line(prog, "terminated" if terminated else "interrupted", 143 if terminated else 130)
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return _line(prog, f"{e.strerror or e}{where}", 1)
    except MemoryError:
        return _line(prog, "out of memory", 1)
    except Exception as e:  # noqa: BLE001 - the boundary: an internal error is still one line
        if os.environ.get("ARMOR_DEBUG"):
            raise
        text = str(e).splitlines()[0] if str(e) else ""
        return _line(prog, f"internal error: {type(e).__name__}: {text} (ARMOR_DEBUG=1 shows the traceback)", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _line(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
