"""Errors a user can act on. The CLI prints them in one line (traceback behind --debug)."""

from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    r"""`text` with the bytes of a non-UTF-8 file name (Python's surrogate escapes) written as \xNN, so that it
    can be printed to any UTF-8 stream: os.fsdecode(b"M\xfcller") -> "M\xfcller" (9 characters); other text
    is unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class MmccdError(Exception):
    """Base class: every expected failure the CLI reports without a traceback."""


class ConfigError(MmccdError, ValueError):
    """A config key, value or file that is wrong (also a ValueError, for callers of the Python API)."""


class DataError(MmccdError):
    """A problem with an input case or file: says which, what was expected, what was found, what to do."""

    def __init__(self, message: str, *, case: str | None = None, file: str | Path | None = None,
                 expected: str | None = None, found: str | None = None, fix: str | None = None):
        self.case, self.file, self.expected, self.found, self.fix = case, file, expected, found, fix
        parts = []
        if case:
            parts.append(f"case {case}")
        if file:
            parts.append(f"file {file}")
        head = (": ".join([", ".join(parts), message]) if parts else message)
        if expected is not None:
            head += f"; expected {expected}"
        if found is not None:
            head += f", found {found}"
        if fix:
            head += f". {fix}"
        super().__init__(printable(head))  # a non-UTF-8 file name is shown, never a crash of print()


class CheckpointError(MmccdError):
    """A checkpoint that is missing, corrupt or from another architecture."""


class OutputExistsError(MmccdError):
    """An output folder that already holds results."""
