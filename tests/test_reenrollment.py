"""One re-enrollment rule for every way in (Python, CLI, HTTP, the bulk import and the
`deal.offer.sent` event): a deal that was ever enrolled in a sequence is not enrolled in it again
unless `again` asks for it, and an open enrollment is never duplicated, `again` or not. Against
PostgreSQL and a real Prefect server (runs are created, not executed: see `deployment`)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import select

from api_support import make_client, new_api_user
from followups.db.models import Deal, Enrollment, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import AlreadyEnrolledError, InvalidInputError, InvalidStateError
from support import at_once, deal_input, new_owner, new_sequence, unique
from test_bulk_enroll import _csv, deal, deployment, runs_of  # noqa: F401 - `deployment` is a fixture


def enrollments_of(owner_id: int, ref: str, sequence_id: int) -> list[tuple[int, str]]:
    with session_scope() as session:
        return [
            (row.id, row.status)
            for row in session.execute(
                select(Enrollment.id, Enrollment.status).join(Deal, Enrollment.deal_id == Deal.id)
                .where(Deal.owner_id == owner_id, Deal.external_id == ref, Enrollment.sequence_id == sequence_id)
                .order_by(Enrollment.id)
            )
        ]


def enrolled_content(enrollment_id: int) -> dict:
    with session_scope() as session:
        return session.scalars(
            select(FollowUpEvent.content).where(FollowUpEvent.enrollment_id == enrollment_id, FollowUpEvent.event_type == "ENROLLED")
        ).one()


# -- Python ---------------------------------------------------------------------------------


def test_a_deal_ever_enrolled_is_refused_unless_again_and_an_open_one_never_twice(deployment):
    from followups.control import cancel_enrollment, enroll_deal

    owner = new_owner()
    sequence = new_sequence(owner)
    the_deal = deal_input()
    ref = the_deal.external_id
    first = enroll_deal(owner, the_deal, sequence)

    for again in (False, True):  # open: never duplicated
        with pytest.raises(AlreadyEnrolledError) as refused:
            enroll_deal(owner, the_deal, sequence, again=again)
        assert (refused.value.enrollment_id, refused.value.enrollment_status, refused.value.field) == (first.id, "ACTIVE", "deal.external_id")
        assert f"deal {ref} is already enrolled in sequence {sequence} (enrollment {first.id}, ACTIVE)" in str(refused.value)

    cancel_enrollment(first.id)
    moved = the_deal.model_copy(update={"property_address": "99 Other Road"})
    with pytest.raises(AlreadyEnrolledError) as refused:
        enroll_deal(owner, moved, sequence)
    assert isinstance(refused.value, InvalidStateError)  # 409 over HTTP, one line in the CLI
    assert str(refused.value) == (
        f"deal {ref} was already enrolled in sequence {sequence} (enrollment {first.id}, CANCELLED); "
        "pass again=true (CLI: --again) to enroll it anew"
    )
    with session_scope() as session:  # refused before the deal was touched
        assert session.scalar(select(Deal.property_address).where(Deal.owner_id == owner, Deal.external_id == ref)) == the_deal.property_address
    assert enrollments_of(owner, ref, sequence) == [(first.id, "CANCELLED")]

    second = enroll_deal(owner, moved, sequence, again=True)
    assert second.id != first.id and second.status == "ACTIVE" and second.flow_run_id
    assert enrollments_of(owner, ref, sequence) == [(first.id, "CANCELLED"), (second.id, "ACTIVE")]
    content = enrolled_content(second.id)
    assert (content["again"], content["previous_enrollment_id"]) == (True, first.id)
    with pytest.raises(AlreadyEnrolledError) as refused:  # the new one is open
        enroll_deal(owner, moved, sequence, again=True)
    assert (refused.value.enrollment_id, refused.value.enrollment_status) == (second.id, "ACTIVE")

    cancel_enrollment(second.id)
    with pytest.raises(AlreadyEnrolledError) as refused:  # the newest one is named
        enroll_deal(owner, moved, sequence)
    assert (refused.value.enrollment_id, refused.value.enrollment_status) == (second.id, "CANCELLED")
    # The rule is per sequence: the same deal enrolls in another one.
    other = enroll_deal(owner, the_deal, new_sequence(owner))
    cancel_enrollment(other.id)
    with pytest.raises(InvalidInputError) as bad:
        enroll_deal(owner, the_deal, sequence, again="sometimes")
    assert bad.value.field == "again"


def test_two_concurrent_again_enrolls_of_a_finished_deal_make_one_enrollment(deployment):
    from followups.control import cancel_enrollment, enroll_deal

    owner = new_owner()
    sequence = new_sequence(owner)
    the_deal = deal_input()
    first = enroll_deal(owner, the_deal, sequence)
    cancel_enrollment(first.id)

    answers = at_once(lambda i: enroll_deal(owner, the_deal, sequence, again=True), 4)
    made = [a for a in answers if not isinstance(a, Exception)]
    refused = [a for a in answers if isinstance(a, Exception)]
    assert len(made) == 1 and len(refused) == 3, answers
    assert all(isinstance(e, AlreadyEnrolledError) and (e.enrollment_id, e.enrollment_status) == (made[0].id, "ACTIVE") for e in refused)
    assert enrollments_of(owner, the_deal.external_id, sequence) == [(first.id, "CANCELLED"), (made[0].id, "ACTIVE")]
    assert len(runs_of([made[0].id])[made[0].id]) == 1
    cancel_enrollment(made[0].id)


@pytest.mark.parametrize("again", [False, True], ids=["first-enrollment", "again-after-finished"])
def test_the_open_enrollment_index_settles_a_race_the_check_cannot_see(deployment, again):
    """Without the advisory lock (`store.create` called directly), both checks pass before
    either insert commits: the partial unique index on open enrollments makes the second insert
    wait for the first and then fail, and it is answered as AlreadyEnrolledError naming the first."""
    from followups.control import cancel_enrollment, enroll_deal
    from followups.deals import upsert_deal
    from followups.lifecycle import store
    from followups.sequences import latest_version_id

    owner = new_owner()
    sequence = new_sequence(owner)
    the_deal = deal_input()
    finished = None
    if again:
        finished = enroll_deal(owner, the_deal, sequence).id
        cancel_enrollment(finished)
    with session_scope() as session:
        deal_id = upsert_deal(session, owner, the_deal)
        version_id, _ = latest_version_id(session, sequence)

    def create(session):
        return store.create(session, deal_id=deal_id, sequence_id=sequence, sequence_version_id=version_id,
                            content={"deal": the_deal.external_id}, again=again)

    answer: list = []

    def second() -> None:
        try:
            with session_scope() as session:
                answer.append(create(session).id)
        except Exception as exc:  # noqa: BLE001 - the answer under test
            answer.append(exc)

    with session_scope() as session:
        winner = create(session).id  # inserted, not committed yet
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive() and answer == []  # its insert waits on the index
    thread.join(timeout=30)
    [refused] = answer
    assert isinstance(refused, AlreadyEnrolledError), refused
    assert (refused.enrollment_id, refused.enrollment_status) == (winner, "ACTIVE")
    expected = ([(finished, "CANCELLED")] if again else []) + [(winner, "ACTIVE")]
    assert enrollments_of(owner, the_deal.external_id, sequence) == expected


# -- CLI and HTTP, one deal -----------------------------------------------------------------


def test_cli_enroll_refuses_a_finished_deal_in_one_line_and_again_enrolls_it(deployment, cli):
    from followups.users import ensure_user

    name = unique("cli-user")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner)
    ref = unique("D")
    args = ["enroll", "--sequence", str(sequence), "--owner", name, "--deal", ref, "--address", "1 Main St",
            "--seller-name", "Ann Lee", "--seller-email", "ann@example.com"]
    code, out, err = cli(*args, "--json")
    assert code == 0, err
    first = json.loads(out)["enrollment_id"]
    code, out, err = cli(*args, "--again")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert f"already enrolled in sequence {sequence} (enrollment {first}, ACTIVE)" in err

    assert cli("cancel", str(first))[0] == 0
    code, out, err = cli(*args)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.strip() == (f"error: deal {ref} was already enrolled in sequence {sequence} (enrollment {first}, CANCELLED); "
                           "pass again=true (CLI: --again) to enroll it anew")
    code, out, err = cli(*args, "--again", "--json")
    assert code == 0, err
    second = json.loads(out)["enrollment_id"]
    assert second != first
    assert enrollments_of(owner, ref, sequence) == [(first, "CANCELLED"), (second, "ACTIVE")]
    cli("cancel", str(second))


@pytest.fixture(scope="module")
def http(deployment):
    with make_client() as client:
        yield client


def test_http_enroll_answers_409_with_the_field_and_the_enrollment(http):
    user = new_api_user()
    sequence = new_sequence(user.id)
    body = {"sequence_id": sequence, "deal": deal()}
    created = http.post("/api/enrollments", json=body, headers=user.headers)
    assert created.status_code == 201, created.text
    first = created.json()["id"]
    for again in (False, True):
        conflict = http.post("/api/enrollments", json={**body, "again": again}, headers=user.headers)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json() == {
            "detail": f"deal {body['deal']['external_id']} is already enrolled in sequence {sequence} (enrollment {first}, ACTIVE); "
                      "an open enrollment is never duplicated",
            "field": "deal.external_id", "enrollment_id": first, "enrollment_status": "ACTIVE",
        }

    assert http.post(f"/api/enrollments/{first}/cancel", headers=user.headers).status_code == 200
    conflict = http.post("/api/enrollments", json=body, headers=user.headers)
    assert conflict.status_code == 409
    answer = conflict.json()
    assert (answer["field"], answer["enrollment_id"], answer["enrollment_status"]) == ("deal.external_id", first, "CANCELLED")
    assert "was already enrolled" in answer["detail"] and "again=true" in answer["detail"]
    bad = http.post("/api/enrollments", json={**body, "again": "sometimes"}, headers=user.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "again"

    anew = http.post("/api/enrollments", json={**body, "again": True}, headers=user.headers)
    assert anew.status_code == 201, anew.text
    assert anew.json()["id"] != first and anew.json()["status"] == "ACTIVE"
    assert http.post(f"/api/enrollments/{anew.json()['id']}/cancel", headers=user.headers).status_code == 200
    openapi = http.get("/openapi.json").json()
    assert "again" in openapi["components"]["schemas"]["EnrollBody"]["properties"]


# -- the bulk import ------------------------------------------------------------------------


def test_import_counts_a_finished_deal_as_there_and_again_enrolls_it_anew(deployment):
    from followups.control import cancel_enrollment, enroll_deals

    owner = new_owner()
    sequence = new_sequence(owner)
    running, finished = deal(), deal()
    first = enroll_deals(owner, [running, finished], sequence)
    assert [r.status for r in first] == ["ok", "ok"]
    cancel_enrollment(first[1].enrollment_id)
    newcomer = deal()
    items = [running, finished, newcomer, dict(finished)]  # the finished deal twice in the batch

    plain = enroll_deals(owner, items, sequence)
    assert [r.status for r in plain] == ["exists", "exists", "ok", "exists"]
    assert [r.enrollment_status for r in plain] == ["ACTIVE", "CANCELLED", "ACTIVE", "CANCELLED"]
    assert [r.enrollment_id for r in plain[:2]] == [first[0].enrollment_id, first[1].enrollment_id]
    assert plain[1].message == f"already enrolled (enrollment {first[1].enrollment_id}, CANCELLED); again=true enrolls it anew"
    assert enrollments_of(owner, finished["external_id"], sequence) == [(first[1].enrollment_id, "CANCELLED")]

    anew = enroll_deals(owner, items, sequence, again=True)
    assert [r.status for r in anew] == ["exists", "ok", "exists", "exists"]
    assert [r.enrollment_id for r in anew[::2]] == [first[0].enrollment_id, plain[2].enrollment_id]  # open ones: there
    made = anew[1]
    assert made.previous_enrollment_id == first[1].enrollment_id and made.enrollment_status == "ACTIVE" and made.flow_run_id
    assert made.message == f"enrolled anew (enrollment {first[1].enrollment_id} was CANCELLED)"
    assert anew[3].enrollment_id == made.enrollment_id and anew[3].message == "repeated in this batch"
    assert enrollments_of(owner, finished["external_id"], sequence) == [(first[1].enrollment_id, "CANCELLED"), (made.enrollment_id, "ACTIVE")]
    content = enrolled_content(made.enrollment_id)
    assert (content["again"], content["previous_enrollment_id"], content["source"]) == (True, first[1].enrollment_id, "batch")
    [run] = runs_of([made.enrollment_id])[made.enrollment_id]
    assert run.id == made.flow_run_id

    rerun = enroll_deals(owner, items, sequence, again=True)  # while they run, again enrolls nothing twice
    assert [r.status for r in rerun] == ["exists"] * 4
    assert [r.enrollment_id for r in rerun[:3]] == [first[0].enrollment_id, made.enrollment_id, plain[2].enrollment_id]
    with pytest.raises(InvalidInputError) as bad:
        enroll_deals(owner, items, sequence, again="yes")
    assert bad.value.field == "again"
    for result in (first[0], made, plain[2]):
        cancel_enrollment(result.enrollment_id)


def test_cli_import_reports_finished_deals_and_enrolls_them_with_again(deployment, cli, tmp_path):
    from followups.control import cancel_enrollment
    from followups.users import ensure_user

    name = unique("importer")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner)
    rows = [deal() for _ in range(3)]
    path = tmp_path / "deals.csv"
    path.write_text(_csv(rows))
    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name, "--json")
    assert code == 0, err
    assert json.loads(out)["enrolled"] == 3
    [(finished, _)] = enrollments_of(owner, rows[1]["external_id"], sequence)
    cancel_enrollment(finished)

    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name)
    assert code == 0, err
    assert ("3 row(s) read (csv): 0 enrolled, 3 already there (1 of them finished: --again enrolls those anew), 0 bad"
            in " ".join(out.split()))
    assert len(enrollments_of(owner, rows[1]["external_id"], sequence)) == 1

    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name, "--again")
    assert code == 0, err
    assert ("3 row(s) read (csv): 1 enrolled (1 of them anew, after finished enrollments), 2 already there, 0 bad"
            in " ".join(out.split()))
    [(_, _), (anew, status)] = enrollments_of(owner, rows[1]["external_id"], sequence)
    assert status == "ACTIVE"

    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name, "--again", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["again"], report["enrolled"], report["enrolled_anew"], report["already_there"], report["already_there_finished"]) == (
        True, 0, 0, 3, 0)
    for row in rows:
        cancel_enrollment(enrollments_of(owner, row["external_id"], sequence)[-1][0])


def test_http_batch_again(http):
    from followups.control import cancel_enrollment

    user = new_api_user()
    sequence = new_sequence(user.id)
    items = [deal(), deal()]
    first = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": items}, headers=user.headers).json()
    cancel_enrollment(first["items"][0]["enrollment_id"])
    plain = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": items}, headers=user.headers)
    assert plain.status_code == 207, plain.text
    assert plain.json()["counts"] == {"ok": 0, "exists": 2, "error": 0}
    assert [i["enrollment_status"] for i in plain.json()["items"]] == ["CANCELLED", "ACTIVE"]
    anew = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": items, "again": True}, headers=user.headers)
    assert anew.status_code == 207, anew.text
    body = anew.json()
    assert body["counts"] == {"ok": 1, "exists": 1, "error": 0}
    assert body["items"][0]["previous_enrollment_id"] == first["items"][0]["enrollment_id"]
    assert body["items"][1]["enrollment_id"] == first["items"][1]["enrollment_id"]
    for item in body["items"]:
        cancel_enrollment(item["enrollment_id"])


# -- offers and the deal.offer.sent event ---------------------------------------------------


def test_offers_and_offer_events_follow_the_rule_and_a_repeated_offer_enrolls_once(deployment, monkeypatch):
    import prefect.events

    from followups.control import cancel_enrollment, record_offer_sent
    from followups.flows.enroll_on_offer import enroll_on_offer
    from followups.offer_events import emit_offer_sent, parse_offer

    owner = new_owner()
    sequence = new_sequence(owner, is_default=True)
    the_deal = deal_input()
    ref = the_deal.external_id
    first = record_offer_sent(owner, unique("offer"), the_deal)
    assert first.enrolled
    cancel_enrollment(first.enrollment_id)

    # A new offer on a deal that was enrolled before: recorded, not enrolled, and told why.
    plain = record_offer_sent(owner, unique("offer"), the_deal)
    assert (plain.created, plain.enrolled, plain.enrollment_id) == (True, False, first.enrollment_id)
    assert f"(enrollment {first.enrollment_id}, CANCELLED)" in plain.reason and "again=true" in plain.reason

    # The event, as Prefect delivers it to the enroll-on-offer flow (the trigger is not under test
    # here: tests/test_control.py runs it), delivered twice: one enrollment.
    emitted: list = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda **event: emitted.append(event))
    offer_id = unique("offer")
    emit_offer_sent(owner, offer_id, the_deal, again=True)
    [event] = emitted
    assert event["event"] == "deal.offer.sent" and set(event["payload"]["offer"]) == {"database", "owner_id", "offer_id", "inbox_id"}
    delivered = [enroll_on_offer(event["payload"]["offer"]) for _ in range(2)]
    assert delivered[0]["enrolled"] and not delivered[1]["enrolled"]
    assert delivered[1]["reason"] == "offer already recorded"
    anew = delivered[0]["enrollment_id"]
    assert delivered[1]["enrollment_id"] == anew
    assert enrollments_of(owner, ref, sequence) == [(first.enrollment_id, "CANCELLED"), (anew, "ACTIVE")]

    # The same offer delivered at once by many (an event and an API call, say): still one.
    cancel_enrollment(anew)
    again_id = unique("offer")
    answers = at_once(lambda i: record_offer_sent(owner, again_id, the_deal, again=True), 3)
    assert not [a for a in answers if isinstance(a, Exception)], answers
    assert sum(a.enrolled for a in answers) == 1 and len({a.enrollment_id for a in answers}) == 1
    latest = enrollments_of(owner, ref, sequence)
    assert len(latest) == 3 and latest[-1] == (answers[0].enrollment_id, "ACTIVE")

    # An open enrollment is never duplicated, again or not; an event without again enrolls nothing.
    event_offer = {"owner_id": owner, "offer_id": unique("offer"), "deal": the_deal.model_dump(mode="json"), "again": True}
    result = enroll_on_offer(event_offer)
    assert not result["enrolled"] and result["enrollment_id"] == latest[-1][0] and "ACTIVE" in result["reason"]
    cancel_enrollment(latest[-1][0])
    result = enroll_on_offer({**event_offer, "offer_id": unique("offer"), "again": False})
    assert not result["enrolled"] and "CANCELLED" in result["reason"]
    assert len(enrollments_of(owner, ref, sequence)) == 3
    with pytest.raises(InvalidInputError) as bad:
        parse_offer({**event_offer, "again": "yes"})
    assert bad.value.field == "offer.again"

