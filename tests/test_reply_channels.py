"""A reply stops the sequences that reach the seller on the channel it came by; a reply from the
seller's other channel stops a sequence only when it says `stop_on_other_channel_reply`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client

from api_support import enrollment_status, multipart
from followups.api.webhooks_sendgrid import record_inbound_email
from followups.db.models import Enrollment
from followups.db.session import session_scope
from followups.replies import InboundSms, dedupe_key, receive_sms
from followups.settings import get_settings
from support import FAST_SEQUENCE, events_of, new_enrollment, new_owner, new_sequence, reach_wait, unique, unique_phone, wait_for

EMAIL_ONLY = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}]
SMS_ONLY = [{"type": "SMS", "body": "Hi, about our offer"}]
OTHER_CHANNEL = {"stop_on_other_channel_reply": True}


def types(enrollment_id: int) -> list[str]:
    return [e.event_type for e in events_of(enrollment_id)]


def sms_reply(phone: str, body: str = "Sounds interesting") -> None:
    number = get_settings().twilio_from_number
    sid = unique("SM")
    receive_sms(InboundSms(phone=phone, to_number=number, body=body, message_sid=sid), dedupe_key("tw", "in", sid),
                global_number=number, max_text=1000)


def email_reply(enrollment_id: int) -> None:
    with session_scope() as session:
        token = session.get(Enrollment, enrollment_id).reply_token
    record_inbound_email({
        "to": f"reply+{token}@{get_settings().reply_domain}", "from": "seller@example.com",
        "subject": "Re: Offer", "text": "Let's talk", "headers": f"Message-ID: <{unique('m')}@example.com>",
    })


def test_an_sms_reply_stops_sms_sequences_and_email_ones_only_when_they_ask(db):
    owner = new_owner()
    phone = unique_phone()
    deal = unique("D")
    both = new_enrollment(owner, new_sequence(owner, FAST_SEQUENCE), external_id=deal, seller_phone=phone)
    email_only = new_enrollment(owner, new_sequence(owner, EMAIL_ONLY), external_id=deal, seller_phone=phone)
    email_asks = new_enrollment(owner, new_sequence(owner, EMAIL_ONLY, options=OTHER_CHANNEL), external_id=deal, seller_phone=phone)
    sms_reply(phone)
    assert enrollment_status(both) == "STOPPED"
    assert enrollment_status(email_asks) == "STOPPED"
    # Recorded (the investor sees the reply), but the email-only sequence goes on.
    assert enrollment_status(email_only) == "ACTIVE" and "REPLY_RECEIVED" in types(email_only)
    stop = [e for e in events_of(both) if e.event_type == "STOPPED"][0]
    assert stop.content["reason_code"] == "replied"


def test_an_sms_stop_still_stops_everything_it_addresses(db):
    owner = new_owner()
    phone = unique_phone()
    email_only = new_enrollment(owner, new_sequence(owner, EMAIL_ONLY), seller_phone=phone)
    sms_reply(phone, "STOP")
    assert enrollment_status(email_only) == "STOPPED"


def test_an_email_reply_stops_its_sequence_and_the_deals_sms_sequences_that_ask(db):
    owner = new_owner()
    deal = unique("D")
    answered = new_enrollment(owner, new_sequence(owner, FAST_SEQUENCE), external_id=deal)
    sms_asks = new_enrollment(owner, new_sequence(owner, SMS_ONLY, options=OTHER_CHANNEL), external_id=deal)
    sms_only = new_enrollment(owner, new_sequence(owner, SMS_ONLY), external_id=deal)
    other_email = new_enrollment(owner, new_sequence(owner, EMAIL_ONLY, options=OTHER_CHANNEL), external_id=deal)
    email_reply(answered)
    assert enrollment_status(answered) == "STOPPED"
    assert enrollment_status(sms_asks) == "STOPPED" and "REPLY_RECEIVED" in types(sms_asks)
    assert enrollment_status(sms_only) == "ACTIVE" and "REPLY_RECEIVED" not in types(sms_only)
    # Another email thread of the same deal is not the other channel: it goes on.
    assert enrollment_status(other_email) == "ACTIVE"


def _run_state(run_id) -> str:
    with get_client(sync_client=True) as prefect:
        return prefect.read_flow_run(run_id).state.type.value


def test_a_reply_during_a_wait_cancels_the_pending_run_and_nothing_more_is_sent(sequence_runner, fake_providers, client):
    deal, enrollment, due = reach_wait(4)
    with session_scope() as session:
        row = session.get(Enrollment, enrollment)
        pending, token = row.prefect_flow_run_id, row.reply_token
    assert _run_state(pending) not in ("CANCELLED", "COMPLETED")
    # The seller answers the email, as SendGrid Inbound Parse posts it.
    body, content_type = multipart({
        "to": f"reply+{token}@{get_settings().reply_domain}", "from": f"Pat <{deal.seller_email}>",
        "subject": "Re: Offer", "text": "Call me tomorrow", "headers": f"Message-ID: <{unique('m')}@example.com>",
    })
    answer = client.post("/webhooks/sendgrid/inbound", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200 and answer.json()["stopped"] == 1
    assert enrollment_status(enrollment) == "STOPPED"
    [stop] = [e for e in events_of(enrollment) if e.event_type == "STOPPED"]
    assert stop.content["reason_code"] == "replied"
    wait_for(lambda: _run_state(pending) == "CANCELLED", timeout=30, what="the pending run cancelled")
    # Past the wait's due time (and a margin for a late runner) the run is still Cancelled.
    settled = due + timedelta(seconds=4)
    wait_for(lambda: datetime.now(UTC) > settled, timeout=30, what="the due time to pass")
    # A runner that had already picked the run up (it prefetches runs due within seconds) still
    # starts it after the cancel: the run then finds the enrollment STOPPED and ends "Stopped"
    # (a new process on a loaded machine can take longer than the margin to get there).
    with get_client(sync_client=True) as prefect:
        state = wait_for(
            lambda: (found := prefect.read_flow_run(pending).state) and found.is_final() and found,
            timeout=60, what="the pending run to end",
        )
    assert state.type.value == "CANCELLED" or (state.type.value == "COMPLETED" and state.name == "Stopped"), state
    assert fake_providers.for_recipient(str(deal.seller_phone)) == []
    assert not any(e.event_type == "SMS_SENT" for e in events_of(enrollment))
    assert [e.event_type for e in events_of(enrollment)].count("EMAIL_SENT") == 1
