"""POST /api/sequences/{id}/preview: what a sequence would do for a deal, without enrolling it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.db.session import session_scope
from followups.inputs import DealInput, Id
from followups.preview import preview_sequence

router = APIRouter(prefix="/api/sequences", tags=["sequences"])


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deal: DealInput = Field(description="The deal, as `POST /api/enrollments` takes it")
    start: str = Field(
        max_length=64, description="When the first step falls due, ISO 8601 (without an offset: UTC)",
        json_schema_extra={"examples": ["2026-12-01T09:30:00-05:00"]},
    )


class PreviewOut(BaseModel):
    sequence_id: int
    sequence_version: int
    start: str
    options: dict[str, Any]
    steps: list[dict[str, Any]] = Field(
        description="Per step: due_at, send_at (window, quiet hours, holidays and the step's own send time `at` "
        "applied), at, deferred_by, detail, the rendered message and the caps its send counts against"
    )


@router.post("/{sequence_id}/preview", response_model=PreviewOut, responses=error_responses(401, 404, 413, 422, 503))
def preview(
    sequence_id: Annotated[Id, Path(description="Sequence id")], body: PreviewRequest, user_id: CurrentUser
) -> dict[str, Any]:
    """Every step's planned time and rendered text for `deal`, first step due at `start`. Reads
    only: nothing is enrolled or written. Another user's sequence answers 404."""
    with session_scope(read_only=True) as session:
        return preview_sequence(session, user_id, sequence_id, body.deal, body.start)
