"""Untrusted text made safe to show: control characters visible, CSV cells no formula."""

from __future__ import annotations

import pytest

from relaysync._util.untrusted_text import csv_cell, visible


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain name.txt", "plain name.txt"),
        ("osc\x1b]0;TITLE\x07.txt", "osc\\x1b]0;TITLE\\x07.txt"),  # OSC 0: the window title
        ("clear\x1b[2J", "clear\\x1b[2J"),
        ("new\nline\r.txt", "new\\x0aline\\x0d.txt"),
        ("csi\x9b31m del\x7f", "csi\\x9b31m del\\x7f"),  # 8-bit CSI (C1), DEL
        ("rtl\u202etxt.exe", "rtl\\u202etxt.exe"),  # shows as "rtlexe.txt" on a terminal
        ("iso\u2066late\u2069 lrm\u200e rlm\u200f", "iso\\u2066late\\u2069 lrm\\u200e rlm\\u200f"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("bad\udcffbyte", "bad\\xffbyte"),  # a path's undecodable byte (surrogateescape)
        ("lone\ud800", "lone\\ud800"),
        ("été [link]", "été [link]"),  # printable text, markup included, is left alone
    ],
)
def test_visible_writes_what_a_terminal_would_act_on_as_escapes(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert visible(text).encode("utf-8")  # no lone surrogate left: any UTF-8 stdout writes it


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (
            '=HYPERLINK("http://evil.example","open me")',
            '\'=HYPERLINK("http://evil.example","open me")',
        ),
        ("=cmd|' -c calc'!A0.txt", "'=cmd|' -c calc'!A0.txt"),
        ("+1+cmd", "'+1+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("a=1", "a=1"),
        ("-12.5", "-12.5"),  # a number (a negative latency between two clocks) stays one
        ("+3e-2", "+3e-2"),
        (-3, -3),
        (None, None),
    ],
)
def test_csv_cells_that_start_a_formula_get_a_quote(value: object, cell: object) -> None:
    assert csv_cell(value) == cell
