"""Listing an owner's enrollments: `control.list_enrollments`, `followups list`, GET /api/enrollments.
Pages are cut by id; every owner sees only their own; bad filters are typed errors with the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_support import make_client, new_api_user
from followups.control import list_enrollments
from followups.db.models import Enrollment
from followups.db.session import session_scope
from followups.errors import InvalidInputError, NotFoundError
from followups.users import ensure_user
from support import new_enrollment, new_owner, new_sequence, unique

pytestmark = pytest.mark.usefixtures("database_url")


def _owner_with_enrollments(n: int, owner: int | None = None) -> tuple[int, int, list[int]]:
    owner = owner or new_owner()
    sequence = new_sequence(owner)
    return owner, sequence, [new_enrollment(owner, sequence) for _ in range(n)]


def _cancel_quietly(enrollment_id: int) -> None:
    # These enrollments have no Prefect run: just the status, as a finished enrollment would have.
    with session_scope() as session:
        session.get(Enrollment, enrollment_id).status = "CANCELLED"


def test_pages_filters_and_owners():
    owner, sequence, ids = _owner_with_enrollments(7)
    _, other_sequence, other_ids = _owner_with_enrollments(2, owner)
    stranger, _, stranger_ids = _owner_with_enrollments(3)
    _cancel_quietly(ids[0])
    mine = sorted(ids + other_ids, reverse=True)

    seen, before = [], None
    while True:
        page = list_enrollments(owner, limit=4, before=before)
        assert len(page.items) <= 4
        seen += [item.id for item in page.items]
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == mine  # newest first, each once, nothing of the stranger's
    assert [i.id for i in list_enrollments(owner, sequence_id=other_sequence).items] == sorted(other_ids, reverse=True)
    assert [i.id for i in list_enrollments(owner, status="cancelled").items] == [ids[0]]
    assert ids[0] not in [i.id for i in list_enrollments(owner, status="ACTIVE", limit=500).items]
    first = list_enrollments(owner, limit=1).items[0]
    assert (first.status, first.current_step, first.sequence_version) == ("ACTIVE", 0, 1)
    # another owner's sequence as a filter finds nothing of theirs
    assert list_enrollments(owner, sequence_id=new_sequence(stranger)).items == []
    assert {i.id for i in list_enrollments(stranger).items} == set(stranger_ids)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"status": "RUNNING"}, "status"),
        ({"status": 3}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": True}, "limit"),
        ({"before": -1}, "before"),
        ({"sequence_id": "1"}, "sequence_id"),
    ],
)
def test_bad_filters_name_their_field(kwargs, field):
    owner = new_owner()
    with pytest.raises(InvalidInputError) as refused:
        list_enrollments(owner, **kwargs)
    assert refused.value.field == field


def test_unknown_owner():
    with pytest.raises(NotFoundError):
        list_enrollments(2**62)


def test_http_list():
    user, other = new_api_user(), new_api_user()
    _, _, ids = _owner_with_enrollments(3, user.id)
    _owner_with_enrollments(2, other.id)
    with make_client() as http:
        answer = http.get("/api/enrollments?limit=2", headers=user.headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [i["id"] for i in body["items"]] == sorted(ids, reverse=True)[:2]
        rest = http.get(f"/api/enrollments?limit=2&before={body['next_before']}", headers=user.headers).json()
        assert [i["id"] for i in rest["items"]] == [min(ids)] and rest["next_before"] is None
        assert http.get("/api/enrollments").status_code == 401
        for query, field in (("status=NOPE", "status"), ("limit=0", "limit"), ("before=abc", "before"), ("colour=red", "colour")):
            refused = http.get(f"/api/enrollments?{query}", headers=user.headers)
            assert refused.status_code == 422, (query, refused.text)
            assert field in json.dumps(refused.json()), refused.text


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    query=st.dictionaries(
        st.sampled_from(["status", "sequence_id", "limit", "before"]),
        st.text(max_size=12) | st.integers().map(str),
        max_size=4,
    )
)
def test_http_list_hostile_queries_never_5xx(query):
    user = _hostile_user()
    with make_client() as http:
        answer = http.get("/api/enrollments", params=query, headers=user.headers)
    assert answer.status_code in (200, 422), answer.text


def _hostile_user():
    if not hasattr(_hostile_user, "user"):
        _hostile_user.user = new_api_user()
    return _hostile_user.user


def test_cli_list(cli):
    name = unique("lister")
    with session_scope() as session:
        owner = ensure_user(session, name)
    _, _, ids = _owner_with_enrollments(3, owner)
    code, out, err = cli("list", "--owner", name, "--json", "--limit", "2")
    assert code == 0, err
    page = json.loads(out)
    assert [i["id"] for i in page["items"]] == sorted(ids, reverse=True)[:2] and page["next_before"]
    code, out, err = cli("list", "--owner", name, "--before", str(page["next_before"]))
    assert code == 0 and str(min(ids)) in out and "more:" not in out
    for args in (["--status", "LATE"], ["--limit", "9999"], ["--owner", unique("nobody")]):
        code, out, err = cli("list", *args, *([] if "--owner" in args else ["--owner", name]))
        assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (args, err)
