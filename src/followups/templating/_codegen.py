"""The code generator of compiled templates.

Jinja's sandbox checks calls, attributes and operators but not loops, literals, `~` or block
buffers; the generated code routes those through hooks of the environment (`bounded_iter`,
`bounded_value`, `bounded_buffer`, see _sandbox).
"""

from __future__ import annotations

from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, optimizeconst


def _bounded_literal(kind: str) -> Any:
    plain = getattr(CodeGenerator, f"visit_{kind}")

    def visit(self: CodeGenerator, node: Any, frame: Any) -> None:
        if getattr(node, "ctx", "load") != "load":  # a tuple as assignment target
            return plain(self, node, frame)
        self.write("environment.bounded_value(")
        plain(self, node, frame)
        self.write(")")
        return None

    return visit


class _BoundedCodeGenerator(CodeGenerator):
    """Routes loops, literals, `~` and block buffers of compiled templates through the sandbox."""

    visit_List, visit_Tuple, visit_Dict = (_bounded_literal(kind) for kind in ("List", "Tuple", "Dict"))

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._loop_iterables: set[int] = set()

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self.write("environment.bounded_iter(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_For(self, node: nodes.For, frame: Any) -> None:
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"{join}(environment.bounded_value((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write(")))")

    def buffer(self, frame: Any) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.bounded_buffer()")
