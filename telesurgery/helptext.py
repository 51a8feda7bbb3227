"""Module docstrings as ``--help`` text: plain words, no reStructuredText markup."""

from __future__ import annotations

import re

_LITERAL = re.compile(r"``([^`]+)``")


def plain_help(doc: str | None) -> str:
    """``doc`` with reST inline literals (double backticks) printed as plain text."""
    return _LITERAL.sub(r"\1", doc or "")
