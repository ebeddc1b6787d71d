"""Files a user names on the command line (input lists, config files, reference lists), read safely: only
regular files are read (a FIFO or device could block or never end, a folder is a mistake), never more than a
cap, as UTF-8 (with or without a byte-order mark) or UTF-16 with one; anything else is one clear line."""
from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def shown(path: str | os.PathLike) -> str:
    """A path for messages: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def size_text(n: int) -> str:
    return f"{n} bytes" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def kind_of(mode: int) -> str:
    return next((name for test, name in SPECIAL_FILES if test(mode)), "not a regular file")


def read_user_file(path: str | os.PathLike, what: str, max_bytes: int, error: type[Exception],
                   limit: str = "") -> str:
    """The text of the file at ``path``; ``error(message)`` is raised, with one line, when it is not a
    regular file, is larger than ``max_bytes`` (``limit`` names the setting that raises the cap), cannot be
    read, or is not UTF-8 / UTF-16-with-BOM text. ``what`` names the file in messages ("input list")."""
    name = shown(path)
    cap = size_text(max_bytes) + " allowed" + (f" ({limit})" if limit else "")
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one
        fd = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno is not None and os.path.isdir(path):
            raise error(f"{what} {name} is a folder, not a file") from None
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # of what was opened, not of what the name pointed to a moment before
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {name} is {kind_of(st.st_mode)}, not a regular file: not read (save it to a file "
                        "first)")
        if st.st_size > max_bytes:
            raise error(f"{what} {name} is {size_text(st.st_size)}, more than the {cap}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew since it was opened
        raise error(f"{what} {name} is more than the {cap}")
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1 if encoding == "utf-8" else "?"
        raise error(f"{what} {name} is not UTF-8 text (line {line}); save it as UTF-8 (or UTF-16 with a "
                    "byte-order mark)") from None
    if "\0" in text:
        raise error(f"{what} {name} holds NUL characters: not a text file (UTF-16 needs a byte-order mark)")
    return text
