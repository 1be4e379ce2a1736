"""Capped string formatting: `str.format` / `format_map` and `%`-formatting (operator and filter).

Widths and precisions are what make a short format string produce a long result, so they are
bounded before formatting runs.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2.sandbox import SandboxedEscapeFormatter, SandboxedFormatter

from followups.templating._errors import TemplateRenderError
from followups.templating._limits import MAX_WIDTH, _budget, _check_size, _limit, _size


def _width(digits: str) -> int:
    width = int(digits) if len(digits) < 8 else MAX_WIDTH + 1
    _limit(width, MAX_WIDTH, "format width")
    return width


_PERCENT_SPEC = re.compile(r"[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?")


def _check_percent_format(template: Any, args: Any) -> None:
    """`'%5d' % x` and the `format` filter: widths and precisions are bounded, `*` is refused."""
    text, extra, i = str(template), 0, 0
    while (i := text.find("%", i) + 1) > 0:
        if text.startswith("(", i):  # %(key)s, where the key may hold balanced parentheses
            depth = 0
            while i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
                if depth == 0:
                    break
        spec = _PERCENT_SPEC.match(text, i)
        for number in spec.groups():
            if number == "*":
                raise TemplateRenderError("'*' widths are not supported in templates")
            extra += _width(number) if number else 0
        i = spec.end() + 1  # past the conversion character, so '%%' is one unit
    _check_size(len(text) + extra + _size(args))


class _BoundedFormat:
    """str.format / format_map: each field's spec is bounded, and so is the whole result."""

    produced = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        _budget().tick()
        for digits in re.findall(r"\d+", format_spec):
            _width(digits)
        _check_size(_size(value))
        result = super().format_field(value, format_spec)  # type: ignore[misc]
        self.produced += len(result)
        _check_size(self.produced)
        return result


class _Formatter(_BoundedFormat, SandboxedFormatter):
    """For str."""


class _EscapeFormatter(_BoundedFormat, SandboxedEscapeFormatter):
    """For Markup."""
