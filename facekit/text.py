"""Showing text that comes from users' files (class names are folder names; run and file names) safely.

A folder name may hold terminal escape sequences, Rich markup or Markdown/HTML syntax; shown raw,
it could recolour or clear the user's terminal, break a table, or inject a ``<script>`` into
report.md. Renderers pass such text through these functions; the names themselves stay as they are.
"""

from __future__ import annotations

import html
import re

# C0 and C1 control characters, DEL, and the Unicode controls that reorder or hide text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: object, keep: str = "") -> str:
    """``text`` with every control character (but those in ``keep``) shown as its escape (``\\x1b``),
    so nothing reaches a terminal raw."""

    def shown(match: re.Match) -> str:
        char = match.group()
        return char if char in keep else char.encode("unicode_escape").decode("ascii")

    return _CONTROL.sub(shown, str(text))


def rich_safe(text: object) -> str:
    """:func:`printable`, with Rich markup escaped: for text inside a string Rich parses for markup."""
    from rich.markup import escape

    return escape(printable(text))


def markdown_safe(text: object, cell: bool = False) -> str:
    """:func:`printable`, safe in a Markdown table cell or heading: HTML (``<script>``) as entities,
    ``|`` and the characters that start Markdown formatting escaped."""
    text = html.escape(printable(text), quote=False)
    text = re.sub(r"([\\`*\[\]|])", r"\\\1", text)
    if not cell:  # what starts a heading, quote or list at a line's start (nothing in a table cell)
        text = re.sub(r"^([#>+-])", r"\\\1", text)
    return re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", text)  # underscores inside names (George_W_Bush) stay readable
