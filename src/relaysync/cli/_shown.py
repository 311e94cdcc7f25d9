"""What the operator commands print of the master's answers: names, paths and errors from the
fleet, with their control characters made visible (relaysync._util.untrusted_text) and, where rich
reads markup, their `[` escaped.

Every string that came from the API goes through `cell` (in a table, a tree or markup) or `shown`
(printed with markup off) before it reaches the terminal; `--json` needs neither (json.dumps
escapes controls and every non-ASCII character).
"""

from __future__ import annotations

from rich.markup import escape

from relaysync._util.untrusted_text import visible


def shown(value: object) -> str:
    """`value` as one line to print with markup off (typer.echo, `console.print(markup=False)`)."""
    return visible(str(value))


def cell(value: object) -> str:
    """`value` as one line of rich markup (a table's cell, a tree's label): shown as it is."""
    return escape(visible(str(value)))


def cell_lines(text: str) -> str:
    """`text`'s lines as markup, each made visible: for text whose line breaks are ours (an
    error that quotes a log's tail), not a name's."""
    return "\n".join(cell(line) for line in text.split("\n"))
