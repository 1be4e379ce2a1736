"""The one error every part of the sandbox raises; a leaf module so all of them can import it."""

from __future__ import annotations


class TemplateRenderError(ValueError):
    """A template that cannot be rendered; the message names the problem."""
