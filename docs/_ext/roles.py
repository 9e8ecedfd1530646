"""Docs build only: turn the Sphinx roles of eventbus's docstrings into Markdown code.

The library's docstrings cross-reference with Sphinx roles (``:class:`~eventbus.Envelope```),
which read well in an editor and in ``help()``. mkdocstrings renders Markdown, where a role
would show up as raw text, so this griffe extension rewrites each role to a code span of the
name it points at (the last part of it, for a ``~`` reference) as the API pages are built.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const|ref):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
