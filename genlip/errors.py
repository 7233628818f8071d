"""One error path for every CLI: expected failures become one line that names the file and what to do.

    from genlip.errors import UserError, cli_main

    def main(argv=None) -> int:
        return cli_main("genlip-data build", lambda: run(argv))

`UserError` is the base of every "your input cannot work" exception in the project (ConfigError,
DatasetError, InputError, ...); `cli_main` prints `PROG: error: MESSAGE` for them and exits 2. Operating-
system failures (missing file, permission denied, read-only or full file system) print the path, the
system's reason and what to do, and exit 74 (sysexits EX_IOERR). Anything else is a bug and keeps its
traceback. This module imports nothing heavy: CLIs answer `--help` and bad arguments before torch loads.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_IO = 74
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """An input, option or file the user can fix; the message says which one and what to change."""


_IO_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or choose another output directory, then rerun",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another output directory, then rerun",
    errno.EACCES: "permission denied: choose a directory you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a directory you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose a writable output directory",
    errno.ENOENT: "no such file or directory: check the path",
    errno.EISDIR: "is a directory: give a file path",
    errno.ENOTDIR: "a part of the path is not a directory: check the path",
    errno.EIO: "input/output error: the storage failed; check the disk, then rerun",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
}


def describe_os_error(e: OSError) -> str:
    """`PATH: what went wrong: what to do` for an OSError (the path first, as `ls` and `cp` do)."""
    where = e.filename if e.filename is not None else "(unknown path)"
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    advice = _IO_ADVICE.get(e.errno)
    if advice is None:
        advice = (e.strerror or str(e)) + ": check the path and the file system, then rerun"
    return f"{where}: {advice}"


def io_error(e: OSError, doing: str = "") -> UserError:
    """Turn an OSError into a UserError that keeps the one-line description (for code that adds context)."""
    return UserError((f"{doing}: " if doing else "") + describe_os_error(e))


def cli_main(prog: str, fn: Callable[[], int | None]) -> int:
    """Run a CLI body; expected failures become one line on stderr and a non-zero exit code."""
    try:
        rc = fn()
        return 0 if rc is None else int(rc)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"{prog}: error: out of memory; use fewer workers or a machine with more memory", file=sys.stderr)
        return EXIT_IO
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # `genlip-x ... | head`: the reader left; not an error
            _silence_stdout()
            return 0
        print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
