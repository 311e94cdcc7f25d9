"""Untrusted text (file names, names and errors from the fleet) made safe to show: a terminal's
control characters written as visible escapes, and CSV cells that no spreadsheet takes for a formula.

A file name may hold any byte but "/" and NUL, and a name or an error may quote one: ESC starts a
terminal's escape sequences (OSC 0 sets the window title, OSC 8 a hyperlink, CSI 2J clears the
screen), a newline breaks a table's row, and a bidirectional control reorders what follows it
(`rtl\\u202etxt.exe` shows as "rtlexe.txt").
"""

from __future__ import annotations

import re

# C0 and C1 controls (a terminal's escape sequences, 8-bit CSI included), DEL, line separators
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# ... and what else a terminal does not show as itself: the bidirectional marks, embeddings,
# overrides and isolates, and lone surrogates (a path's undecodable bytes, which no UTF-8 stdout
# can even write)
_NOT_SHOWN_AS_ITSELF = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
# What a spreadsheet starts a formula (or a DDE command) with, at the start of a cell (OWASP,
# "CSV Injection")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# ... except a number (a negative latency between two clocks), which stays one
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a path's undecodable byte, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character, bidirectional control and lone surrogate written as
    its escape (`\\x1b`, `\\x0a`, `\\u202e`; a path's undecodable byte as that byte, `\\xff`):
    one line that shows what it holds and does nothing to the terminal. A backslash stays as it
    is (a name seldom holds one; doubling it would make every such name harder to read)."""
    return _NOT_SHOWN_AS_ITSELF.sub(_escape, text)


def csv_cell(value: object) -> object:
    """`value` fit for a CSV cell a spreadsheet opens: text that starts with what starts a formula
    gets a leading `'` (shown as text, not run); numbers, in text too, and other text stay as
    they are."""
    if (
        isinstance(value, str)
        and value.startswith(_FORMULA_STARTS)
        and not _NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value
