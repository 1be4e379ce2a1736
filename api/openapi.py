"""The OpenAPI document, tightened where pydantic's generated schema says less than validation.

- Step `type` is the discriminator of the steps union: required, although the step models
  give it a default.
- Decimal amounts accept a number or a decimal string; the string form gets its pattern.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

STEP_SCHEMAS = ("EmailStep", "SmsStep", "WaitStep")
DECIMAL_STRING_PATTERN = r"^\d{1,12}(\.\d{1,2})?$"


def _tighten_decimals(node: Any) -> None:
    if isinstance(node, dict):
        variants = node.get("anyOf")
        if isinstance(variants, list) and any(v.get("type") == "number" for v in variants if isinstance(v, dict)):
            for variant in variants:
                if isinstance(variant, dict) and variant.get("type") == "string" and "pattern" not in variant:
                    variant["pattern"] = DECIMAL_STRING_PATTERN
        for value in node.values():
            _tighten_decimals(value)
    elif isinstance(node, list):
        for value in node:
            _tighten_decimals(value)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas = document.get("components", {}).get("schemas", {})
    for name in STEP_SCHEMAS:
        for key in (name, f"{name}-Input"):
            schema = schemas.get(key)
            if schema is not None:
                required = schema.setdefault("required", [])
                if "type" not in required:
                    required.insert(0, "type")
    _tighten_decimals(schemas)
    return document


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
