"""Sequence templates: create, read, list, edit (a new version each time) and archive.

An enrollment pins the sequence version it started with, so editing a template never changes
a sequence that is already running. Deleting a template that still has open enrollments is
refused; `archive=True` hides it instead and lets the open enrollments finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from followups.db.models import OPEN_STATUSES, Enrollment, Sequence, SequenceVersion
from followups.errors import InvalidStateError, NotFoundError
from followups.inputs import SequenceInput, SequencePatch, check_id, require_owner, validate
from followups.sequence_options import check_send_times, check_sms_can_go_out, load_stored_options
from followups.steps import checked_templates



@dataclass(frozen=True)
class SequenceInfo:
    id: int
    owner_id: int
    name: str
    description: str
    enabled: bool
    is_default: bool
    version: int
    steps: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    options: dict[str, Any]

    @classmethod
    def of(cls, row: Sequence) -> SequenceInfo:
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            name=row.name,
            description=row.description,
            enabled=row.enabled,
            is_default=row.is_default,
            version=row.version,
            steps=row.steps,
            created_at=row.created_at,
            updated_at=row.updated_at,
            # Rows older than the options column hold `{}`: shown with the defaults they run with.
            options=load_stored_options(row.options).to_json(),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "is_default": self.is_default,
            "version": self.version,
            "steps": self.steps,
            "options": self.options,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _clear_default(session: Session, owner_id: int, keep_id: int | None = None) -> None:
    statement = update(Sequence).where(Sequence.owner_id == owner_id, Sequence.is_default.is_(True))
    if keep_id is not None:
        statement = statement.where(Sequence.id != keep_id)
    session.execute(statement.values(is_default=False))


def create_sequence(
    session: Session, owner_id: int, spec: SequenceInput | Mapping[str, Any] | None = None, /, **fields: Any
) -> SequenceInfo:
    """Create a template (version 1) from a SequenceInput, a mapping or keyword fields (name,
    steps, description, enabled, is_default). Raises InvalidInputError or NotFoundError (owner)
    before writing anything."""
    with checked_templates():
        data = validate(SequenceInput, _spec(spec, fields))
    require_owner(session, owner_id)
    parsed = data.steps_json()
    check_sms_can_go_out(parsed, data.options)
    check_send_times(parsed, data.options)
    options = data.options.to_json()
    if data.is_default:
        _clear_default(session, owner_id)
    row = Sequence(
        owner_id=owner_id,
        name=data.name,
        description=data.description,
        enabled=data.enabled,
        is_default=data.is_default,
        version=1,
        steps=parsed,
        options=options,
    )
    session.add(row)
    session.flush()
    session.add(SequenceVersion(sequence_id=row.id, version=1, steps=parsed, options=options))
    session.flush()
    session.refresh(row)
    return SequenceInfo.of(row)


def _spec(spec: BaseModel | Mapping[str, Any] | None, fields: dict[str, Any]) -> Any:
    if spec is None:
        return fields
    if fields:
        raise TypeError("pass the sequence either as one object or as keyword fields, not both")
    if isinstance(spec, BaseModel):
        # Validated from plain data again, so that templates a web request only parsed (its
        # event loop defers rendering) are rendered here, off the loop and with the time limit.
        return spec.model_dump(exclude_unset=True)
    return spec


def _owned(session: Session, owner_id: int, sequence_id: int, *, lock: bool = False) -> Sequence:
    owner_id = check_id(owner_id, "owner_id")
    sequence_id = check_id(sequence_id, "sequence_id")
    statement = select(Sequence).where(
        Sequence.id == sequence_id, Sequence.owner_id == owner_id, Sequence.archived_at.is_(None)
    )
    if lock:
        statement = statement.with_for_update()
    row = session.scalars(statement).first()
    if row is None:
        raise NotFoundError("sequence", sequence_id)
    return row


def get_sequence(session: Session, owner_id: int, sequence_id: int) -> SequenceInfo:
    return SequenceInfo.of(_owned(session, owner_id, sequence_id))


def list_sequences(session: Session, owner_id: int, *, limit: int = 50, offset: int = 0) -> list[SequenceInfo]:
    owner_id = check_id(owner_id, "owner_id")
    limit = check_id(limit, "limit")
    offset = 0 if type(offset) is int and offset == 0 else check_id(offset, "offset")
    rows = session.scalars(
        select(Sequence)
        .where(Sequence.owner_id == owner_id, Sequence.archived_at.is_(None))
        .order_by(Sequence.created_at.desc(), Sequence.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [SequenceInfo.of(row) for row in rows]


def count_sequences(session: Session, owner_id: int) -> int:
    owner_id = check_id(owner_id, "owner_id")
    return session.scalar(
        select(func.count()).select_from(Sequence).where(Sequence.owner_id == owner_id, Sequence.archived_at.is_(None))
    ) or 0


def update_sequence(
    session: Session,
    owner_id: int,
    sequence_id: int,
    patch: SequencePatch | Mapping[str, Any] | None = None,
    /,
    **fields: Any,
) -> SequenceInfo:
    """Edit a template from a SequencePatch, a mapping or keyword fields; a field left out or
    None keeps its value. New steps make a new version; running enrollments keep theirs."""
    with checked_templates():
        data = validate(SequencePatch, _spec(patch, fields))
    require_owner(session, owner_id)
    row = _owned(session, owner_id, sequence_id, lock=True)
    parsed = data.steps_json()
    options = None if data.options is None else data.options.to_json()
    steps_changed = parsed is not None and parsed != row.steps
    options_changed = options is not None and options != load_stored_options(row.options).to_json()
    if steps_changed or options_changed:
        steps, checked_options = row.steps if parsed is None else parsed, data.options or load_stored_options(row.options)
        check_sms_can_go_out(steps, checked_options)
        check_send_times(steps, checked_options)
    if steps_changed or options_changed:
        # Options belong to the version too: running enrollments keep the ones they started with.
        row.version += 1
        if steps_changed:
            row.steps = parsed
        if options_changed:
            row.options = options
        session.add(SequenceVersion(sequence_id=row.id, version=row.version, steps=row.steps, options=row.options))
    if data.name is not None:
        row.name = data.name
    if data.description is not None:
        row.description = data.description
    if data.enabled is not None:
        row.enabled = data.enabled
    if data.is_default is not None:
        if data.is_default:
            _clear_default(session, owner_id, keep_id=row.id)
        row.is_default = data.is_default
    session.flush()
    session.refresh(row)
    return SequenceInfo.of(row)


def open_enrollment_count(session: Session, sequence_id: int) -> int:
    sequence_id = check_id(sequence_id, "sequence_id")
    return session.scalar(
        select(func.count())
        .select_from(Enrollment)
        .where(Enrollment.sequence_id == sequence_id, Enrollment.status.in_(sorted(OPEN_STATUSES)))
    ) or 0


def delete_sequence(session: Session, owner_id: int, sequence_id: int, *, archive: bool = False) -> str:
    """Delete a template, or archive it. Returns "deleted" or "archived".

    Enrollments and events refer to a template's versions forever (the event log is
    append-only), so a template that was ever used is archived rather than removed; one with
    open enrollments is refused unless `archive=True`.
    """
    row = _owned(session, owner_id, sequence_id, lock=True)
    open_count = open_enrollment_count(session, sequence_id)
    if open_count and not archive:
        raise InvalidStateError(
            f"sequence {sequence_id} has {open_count} active or paused enrollment(s); "
            "cancel them first or archive the sequence"
        )
    ever_used = session.scalar(select(func.count()).select_from(Enrollment).where(Enrollment.sequence_id == sequence_id))
    if ever_used:
        row.archived_at = func.now()
        row.is_default = False
        session.flush()
        return "archived"
    session.query(SequenceVersion).filter(SequenceVersion.sequence_id == sequence_id).delete()
    session.delete(row)
    session.flush()
    return "deleted"


def latest_version_id(session: Session, sequence_id: int) -> tuple[int, int]:
    """(version row id, version number) of the newest version of a template."""
    sequence_id = check_id(sequence_id, "sequence_id")
    row = session.execute(
        select(SequenceVersion.id, SequenceVersion.version)
        .where(SequenceVersion.sequence_id == sequence_id)
        .order_by(SequenceVersion.version.desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotFoundError("sequence", sequence_id)
    return row[0], row[1]
