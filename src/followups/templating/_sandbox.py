"""The sandboxed environment: its call and operator hooks, the methods templates may call, and
the hooks that compiled templates call (see _codegen).
"""

from __future__ import annotations

import math
import types
from functools import update_wrapper
from typing import Any

from jinja2 import StrictUndefined
from jinja2.runtime import BlockReference, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from followups.templating._codegen import _BoundedCodeGenerator
from followups.templating._errors import TemplateRenderError
from followups.templating._filters import _bounded_filter
from followups.templating._formatting import _check_percent_format, _EscapeFormatter, _Formatter
from followups.templating._limits import (
    MAX_INT,
    MAX_ITEMS,
    MAX_LOOP_ITERATIONS,
    MAX_WIDTH,
    _budget,
    _check_size,
    _checked,
    _limit,
    _materialize,
    _replaced_size,
    _size,
)


# Methods of built-in values a template may call; any other (to_bytes, encode, expandtabs,
# translate, class methods...) is refused.
_ALLOWED_METHODS: tuple[tuple[Any, frozenset[str]], ...] = (
    (str, frozenset(
        "capitalize casefold center count endswith find index isalnum isalpha isascii isdecimal isdigit "
        "isidentifier islower isnumeric isprintable isspace istitle isupper join ljust lower lstrip partition "
        "removeprefix removesuffix replace rfind rindex rjust rpartition rsplit rstrip split splitlines "
        "startswith strip swapcase title upper zfill striptags unescape".split()
    )),
    (dict, frozenset({"get", "items", "keys", "values"})),
    ((list, tuple), frozenset({"count", "index"})),
)
_VALUE_TYPES = (str, bytes, bytearray, int, float, complex, list, tuple, dict, set, frozenset, range, type)


def _str_method_args(owner: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _limit(args[0], MAX_WIDTH, "width")
    elif name == "replace" and len(args) >= 2:
        _check_size(_replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1))
    elif name == "join" and args:
        items = _materialize(args[0])
        _check_size(_size(items) + len(owner) * len(items))
        args = (items, *args[1:])
    return args


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > math.log2(MAX_INT):
            raise TemplateRenderError("number too large")


def _check_product(left: Any, right: Any) -> None:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            if count > 0:
                _check_size(_size(sequence) * count)
            return
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > 258:
        raise TemplateRenderError("number too large")


def _bounded_range(*args: Any) -> range:
    items = range(*args)
    try:
        too_many = len(items) > MAX_ITEMS
    except OverflowError:
        too_many = True
    if too_many:
        raise TemplateRenderError(f"range() is limited to {MAX_ITEMS} items")
    return items


class _Buffer(list):
    """The output collected inside macros, call, filter and `{% set %}` blocks."""

    size = 0

    def append(self, item: Any) -> None:
        self._grow(len(item))
        super().append(item)

    def extend(self, items: Any) -> None:
        items = tuple(items)
        self._grow(sum(len(item) for item in items))
        super().extend(items)

    def _grow(self, size: int) -> None:
        budget = _budget()
        budget.check_time()
        budget.allocate(size)
        self.size += size
        _check_size(self.size)


def _finalize(value: Any) -> Any:
    _check_size(_size(value))
    return value


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any):
        super().__init__(undefined=StrictUndefined, finalize=_finalize, **options)
        self.globals["range"] = _bounded_range
        del self.globals["lipsum"]  # lipsum(n) writes n paragraphs
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "+" and isinstance(left, str | list | tuple):
            _check_size(_size(left) + _size(right))
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, right)
        try:
            result = self.binop_table[operator](left, right)
        except OverflowError as exc:
            raise TemplateRenderError("number too large") from exc
        if isinstance(result, float) and math.isinf(result):
            if not any(isinstance(value, float) and math.isinf(value) for value in (left, right)):
                raise TemplateRenderError("number too large")
        return _checked(result, budget)

    def is_safe_callable(self, obj: Any) -> bool:
        if not super().is_safe_callable(obj) or isinstance(obj, BlockReference):
            return False
        owner = getattr(obj, "__self__", None)
        if isinstance(obj, types.BuiltinMethodType | types.MethodType) and isinstance(owner, _VALUE_TYPES):
            name = getattr(obj, "__name__", "")
            return any(isinstance(owner, kind) and name in names for kind, names in _ALLOWED_METHODS)
        return True

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if not self.is_safe_callable(obj):
            raise TemplateRenderError(f"calling {getattr(obj, '__name__', type(obj).__name__)!r} is not allowed")
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level is loop work too
            args = (self.bounded_iter(args[0]), *args[1:])
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            args = _str_method_args(owner, getattr(obj, "__name__", ""), args)
        return _checked(context.call(obj, *args, **kwargs), budget)

    def wrap_str_format(self, value: Any) -> Any:
        name = getattr(value, "__name__", None)
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or name not in ("format", "format_map"):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if name == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            formatter = _EscapeFormatter(self, escape=owner.escape) if isinstance(owner, Markup) else _Formatter(self)
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return update_wrapper(bounded_format, value)

    # Called from compiled templates (see _BoundedCodeGenerator).

    def bounded_iter(self, iterable: Any) -> Any:
        budget = _budget()
        for item in iterable:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP_ITERATIONS:
                raise TemplateRenderError(f"loops run more than {MAX_LOOP_ITERATIONS} times")
            budget.check_time()
            yield item

    def bounded_value(self, value: Any) -> Any:
        budget = _budget()
        budget.tick()
        return _checked(value, budget)

    def bounded_buffer(self) -> _Buffer:
        return _Buffer()


_env = _BoundedSandbox(autoescape=False)
_html_env = _BoundedSandbox(autoescape=True)
