"""Bounds of one render: the limits, the per-render budget and cheap size estimates.

Sizes are estimated before the work that would build a large value, so a template fails fast
instead of first allocating what it is refused.
"""

from __future__ import annotations

import contextvars
import itertools
import time
from typing import Any

from jinja2.utils import Namespace

from followups.templating._errors import TemplateRenderError

MAX_RENDERED_LENGTH = 100_000  # one email part; SMS callers pass their own, smaller limit
MAX_SOURCE_LENGTH = 100_000  # compiling a dense template costs ~1 s per 100 KB
MAX_VALUE_SIZE = 100_000  # any string or container a template builds, measured deep (~characters)
MAX_ALLOCATED = 2_000_000  # characters and items built over one render
MAX_INT = 2**256
MAX_WIDTH = 1_000  # widths, precisions, padding and indents
MAX_ITEMS = 1_000  # range() length, batch and slice counts
MAX_LOOP_ITERATIONS = 10_000  # all loops of one render together
MAX_OPERATIONS = 100_000  # calls, filters and operators of one render
VALIDATION_TIMEOUT = 1.0  # seconds, at save time against the sample deal
RENDER_TIMEOUT = 5.0  # seconds, at send time: a real deal may carry more data than the sample


class _Budget:
    def __init__(self, timeout: float):
        self.deadline = time.monotonic() + timeout
        self.operations = self.iterations = self.allocated = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateRenderError("template took too long")

    def tick(self) -> None:
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise TemplateRenderError(f"template does more than {MAX_OPERATIONS} operations")
        self.check_time()

    def allocate(self, size: int) -> None:
        self.allocated += size
        if self.allocated > MAX_ALLOCATED:
            raise TemplateRenderError(f"template builds more than {MAX_ALLOCATED} characters in all")


_current_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _budget() -> _Budget:
    # Outside render() (the environment used directly) the per-value caps still hold.
    return _current_budget.get() or _Budget(RENDER_TIMEOUT)


# --- sizes ---------------------------------------------------------------------------------------


def _size(value: Any, limit: int = MAX_VALUE_SIZE, per_level: int = 0) -> int:
    """About how many characters str(value) takes. Containers are walked, shared items counted
    each time they appear (as their text would be); stops as soon as the total passes `limit`."""
    total, steps, stack = 0, 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        total += depth * per_level
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, list | tuple | set | frozenset | dict | Namespace):
            if isinstance(item, Namespace):
                item = object.__getattribute__(item, "_Namespace__attrs")
            total += len(item)
            if total <= limit:  # children are pushed only when the container itself fits
                children = itertools.chain(item.keys(), item.values()) if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
        else:
            total += 8
        if total > limit:
            return total
        steps += 1
        if not steps % 4096:
            _budget().check_time()
    return total


def _check_size(size: int) -> None:
    if size > MAX_VALUE_SIZE:
        raise TemplateRenderError(f"a value in the template would be longer than {MAX_VALUE_SIZE} characters")


def _limit(value: Any, limit: int, what: str) -> None:
    if isinstance(value, int | float) and value > limit:
        raise TemplateRenderError(f"{what} is too large (at most {limit})")


def _checked(value: Any, budget: _Budget) -> Any:
    """Cap a value a hook produced and charge it to the render."""
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_INT:
            raise TemplateRenderError("number too large")
    elif isinstance(value, str | bytes | list | tuple | dict | set | frozenset | Namespace):
        _check_size(_size(value))
        budget.allocate(0 if isinstance(value, Namespace) else len(value))
    return value


def _materialize(values: Any) -> Any:
    if isinstance(values, str | list | tuple):
        return values
    items = list(itertools.islice(values, MAX_VALUE_SIZE + 1))
    _check_size(len(items))
    return items


def _replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    text, old, new = str(text), str(old), str(new)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(0, len(new) - len(old))
