"""Writing files with their final mode, and reading the end of a log."""

from __future__ import annotations

import os
from pathlib import Path

LOG_TAIL_LINES = 30


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # created with its final mode: a file holding passwords is never readable by others
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as fh:
        fh.write(text)
    tmp.chmod(mode)  # the umask may have narrowed it
    tmp.replace(path)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, since: int = 0) -> str:
    """Last lines of a log (only those written after byte ``since``), read from the end."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(since, size - max(lines * 400, 65536), 0)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return f"(no log at {path})"
    text = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])
