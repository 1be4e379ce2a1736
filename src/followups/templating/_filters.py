"""Jinja's built-in filters wrapped so each one is counted, size-checked and argument-checked."""

from __future__ import annotations

import inspect
from functools import update_wrapper
from typing import Any

from followups.templating._formatting import _check_percent_format
from followups.templating._limits import (
    MAX_ITEMS,
    MAX_VALUE_SIZE,
    MAX_WIDTH,
    _budget,
    _check_size,
    _checked,
    _limit,
    _materialize,
    _replaced_size,
    _size,
)


def _join_check(a: dict[str, Any], separator: Any) -> None:
    items = a["value"] = _materialize(a["value"])
    _check_size(_size(items) + len(str(separator)) * len(items))


def _indent_check(a: dict[str, Any], key: str, text: str) -> None:
    indent = a[key]
    step = len(indent) if isinstance(indent, str) else max(0, indent or 0)
    _limit(step, MAX_WIDTH, "indent")
    if key == "width":  # the indent filter: one indent per line
        _check_size(len(text) + (text.count("\n") + 1) * step)
    else:  # tojson: one indent per nesting level per item
        _check_size(_size(a["value"], per_level=step + 1))


def _urlize_check(a: dict[str, Any]) -> None:
    text, extra = str(a["value"]), len(str(a["target"] or "")) + len(str(a["rel"] or ""))
    _check_size(3 * len(text) + (len(text.split()) + 1) * (extra + 60))


# Run on a filter's bound arguments before the filter (they may replace an argument).
_FILTER_CHECKS: dict[str, Any] = {
    "center": lambda a: _limit(a["width"], MAX_WIDTH, "width"),
    "format": lambda a: _check_percent_format(a["value"], a["kwargs"] or a["args"]),
    "indent": lambda a: _indent_check(a, "width", str(a["s"])),
    "tojson": lambda a: _indent_check(a, "indent", ""),
    "wordwrap": lambda a: (
        _limit(a["width"], MAX_VALUE_SIZE, "wrap width"),
        _check_size(len(str(a["s"])) * (1 + len(str(a["wrapstring"] or "\n")))),
    ),
    "truncate": lambda a: (_limit(a["length"], MAX_VALUE_SIZE, "length"), _limit(a["leeway"], MAX_VALUE_SIZE, "leeway")),
    "join": lambda a: _join_check(a, a["d"]),
    "batch": lambda a: _limit(a["linecount"], MAX_ITEMS, "batch size"),
    "slice": lambda a: _limit(a["slices"], MAX_ITEMS, "number of slices"),
    "replace": lambda a: _check_size(_replaced_size(a["s"], a["old"], a["new"], a["count"])),
    "round": lambda a: _limit(abs(a["precision"]) if isinstance(a["precision"], int) else 0, 100, "precision"),
    "pprint": lambda a: _check_size(_size(a["value"], per_level=2)),
    "urlize": _urlize_check,
}


def _bounded_filter(name: str, func: Any) -> Any:
    signature = inspect.signature(func)
    if getattr(func, "jinja_async_variant", False) and not hasattr(func.__wrapped__, "jinja_pass_arg"):
        # Jinja's sync/async dispatcher takes an eval context that its signature does not show.
        extra = inspect.Parameter("_eval_ctx", inspect.Parameter.POSITIONAL_ONLY)
        signature = signature.replace(parameters=[extra, *signature.parameters.values()])
    check = _FILTER_CHECKS.get(name)

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        _check_size(_size((args, kwargs)))  # inputs must fit before a filter turns them into text
        if check is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check(bound.arguments)
            args, kwargs = bound.args, bound.kwargs
        return _checked(func(*args, **kwargs), budget)

    return update_wrapper(bounded, func)
