"""Unknown query parameters are rejected (422), as unknown body fields are."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError

_known_cache: dict[int, frozenset[str]] = {}


def _query_names(dependant: object) -> set[str]:
    names = {getattr(param, "alias", None) or param.name for param in getattr(dependant, "query_params", [])}
    for sub in getattr(dependant, "dependencies", []):
        names |= _query_names(sub)
    return names


def _known(route: object) -> frozenset[str] | None:
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    key = id(route)
    if key not in _known_cache:
        _known_cache[key] = frozenset(_query_names(dependant))
    return _known_cache[key]


def reject_unknown_query(request: Request) -> None:
    known = _known(request.scope.get("route"))
    if known is None:
        return
    unknown = [name for name in request.query_params.keys() if name not in known]
    if unknown:
        raise RequestValidationError(
            [{"loc": ("query", unknown[0]), "msg": "unknown query parameter", "type": "extra_forbidden"}]
        )
