"""MkDocs hook: the CLI and HTTP API reference pages, generated at build time.

A page holding `<!-- generated: cli -->` gets the Typer app's help as markdown (Typer's own
docs generator); `<!-- generated: openapi -->` gets the FastAPI app's OpenAPI document as
markdown. Generating them from the code keeps the reference from drifting from it.
"""

from __future__ import annotations

import re
from typing import Any

CLI_MARKER = "<!-- generated: cli -->"
OPENAPI_MARKER = "<!-- generated: openapi -->"
METHODS = ("get", "post", "put", "patch", "delete")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    if OPENAPI_MARKER in markdown:
        markdown = markdown.replace(OPENAPI_MARKER, openapi_markdown())
    return markdown


# --- CLI -----------------------------------------------------------------------------------------


def cli_markdown() -> str:
    import typer.main
    from typer.cli import get_docs_for_click

    from followups.cli import app

    command = typer.main.get_command(app)
    ctx = command.make_context("followups", [], resilient_parsing=True)
    text = get_docs_for_click(obj=command, ctx=ctx, name="followups")
    return _demote_headings(text)


def _demote_headings(text: str) -> str:
    """One level down, so the generated `# followups` sits under the page's own title."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out) + "\n"


# --- HTTP API ------------------------------------------------------------------------------------


def openapi_markdown() -> str:
    from followups.api.app import create_app

    return render_openapi(create_app().openapi())


def render_openapi(doc: dict[str, Any]) -> str:
    lines = [doc["info"].get("description", "").strip(), ""]
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                groups.setdefault(_group(path), []).append((method, path, item[method]))
    for group, operations in groups.items():
        lines += [f"## {group}", ""]
        for method, path, op in operations:
            lines += _operation(method, path, op)
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["## Schemas", ""]
        for name, schema in schemas.items():
            lines += _schema(name, schema)
    return "\n".join(lines) + "\n"


def _group(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if parts[0] in ("api", "webhooks") and len(parts) > 1:
        return "/" + "/".join(parts[:2])
    return "/" + parts[0]


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    if op.get("summary"):
        lines += [f"*{op['summary']}*", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | required | description |", "| --- | --- | --- | --- | --- |"]
        for p in params:
            lines.append(
                f"| `{p['name']}` | {p.get('in', '')} | {_type(p.get('schema', {}))} | "
                f"{'yes' if p.get('required') else 'no'} | {_cell(p.get('description') or p.get('schema', {}).get('description', ''))} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        kinds = ", ".join(f"`{ct}` {_type(c.get('schema', {}))}" for ct, c in body.get("content", {}).items())
        lines += [f"**Request body**{' (required)' if body.get('required') else ''}: {kinds}", ""]
    responses = op.get("responses", {})
    if responses:
        lines += ["| response | description | body |", "| --- | --- | --- |"]
        for code, r in responses.items():
            content = r.get("content", {})
            kinds = ", ".join(_type(c.get("schema", {})) for c in content.values() if c.get("schema"))
            lines.append(f"| {code} | {_cell(r.get('description', ''))} | {kinds} |")
        lines.append("")
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name} {{#{_anchor(name)}}}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    props = schema.get("properties")
    if props:
        required = set(schema.get("required", []))
        lines += ["| field | type | required | description |", "| --- | --- | --- | --- |"]
        for field, sub in props.items():
            lines.append(f"| `{field}` | {_type(sub)} | {'yes' if field in required else 'no'} | {_cell(sub.get('description', ''))} |")
        lines.append("")
    elif schema.get("enum") or schema.get("type"):
        lines += [f"Type: {_type(schema)}", ""]
    return lines


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _type(schema: dict[str, Any]) -> str:
    """A short type in markdown: schema references link to their section below."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " \\| ".join(_type(s) for s in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"map of {_type(schema['additionalProperties'])}"
    if kind is None:
        return "any"
    text = f"`{kind}`"
    if schema.get("format"):
        text += f" ({schema['format']})"
    return text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
