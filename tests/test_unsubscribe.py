"""One-click unsubscribe (RFC 8058): the headers on the wire, the signed link, GET that changes
nothing, POST that opts the address out for its owner and stops the sequences, and the footer."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from rich.console import Console
from sqlalchemy import func, select

from api_support import enrollment_status, multipart
from followups.db.models import Enrollment, FollowUpEvent
from followups.db.session import session_scope
from followups.execution.sending import execute_send_step
from followups.providers import Providers
from followups.providers.console import send_email_console
from followups.replies.suppression import email_opted_out
from followups.settings import get_settings, reset_settings
from followups.unsubscribe import InvalidTokenError, _today, make_token, verify_token
from support import events_of, new_enrollment, new_owner, new_sequence, unique

BASE = "https://offers.example.com"
ADDRESS = "Acme Offers LLC, 1 Main St, Springfield, IL 62701"
STEPS = [
    {"type": "EMAIL", "subject": "Offer", "text": "Hi {{ seller.first_name }}", "html": "<html><body><p>Hi</p></body></html>"},
    {"type": "WAIT", "seconds": 60},
    {"type": "SMS", "body": "Any news?"},
]


@pytest.fixture
def configured(db, monkeypatch):
    monkeypatch.setenv("FOLLOWUPS_UNSUBSCRIBE_SECRET", "test-unsubscribe-secret")
    monkeypatch.setenv("FOLLOWUPS_PUBLIC_BASE_URL", BASE)
    monkeypatch.setenv("FOLLOWUPS_EMAIL_PHYSICAL_ADDRESS", ADDRESS)
    reset_settings()
    yield get_settings()
    monkeypatch.undo()
    reset_settings()


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "form":
            self.found.append({**dict(attrs), "inputs": []})
        elif tag == "input" and self.found:
            self.found[-1]["inputs"].append(dict(attrs))


def forms(page: str) -> list[dict]:
    parser = _Forms()
    parser.feed(page)
    return parser.found


def rows() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(FollowUpEvent))


def send_first_email(enrollment_id: int, settings) -> dict:
    """Step 0 through the live SendGrid client against respx: the JSON SendGrid received."""
    url = settings.sendgrid_base_url.rstrip("/") + "/v3/mail/send"
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(url).mock(return_value=httpx.Response(202, headers={"X-Message-Id": unique("msg")}))
        with httpx.Client() as http:
            assert execute_send_step(enrollment_id, 0, providers=Providers(settings, http)).outcome == "sent"
    return json.loads(route.calls.last.request.content)


def one_click_url(payload: dict) -> str:
    header = payload["headers"]["List-Unsubscribe"]
    [url] = [u for u in re.findall(r"<([^>]+)>", header) if u.startswith("https://")]
    return url


def test_every_email_carries_one_click_headers_and_the_footer(configured):
    owner = new_owner()
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS))
    payload = send_first_email(enrollment, configured)
    headers = payload["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    urls = re.findall(r"<([^>]+)>", headers["List-Unsubscribe"])
    assert len(urls) == 2 and urls[0].startswith(f"{BASE}/u/v1.{owner}.{enrollment}.0.")
    assert urls[1].startswith("mailto:reply+") and urls[1].endswith("?subject=unsubscribe")
    text, html = (c["value"] for c in payload["content"])
    assert text.endswith(f"{ADDRESS}\nUnsubscribe: {urls[0]}")
    assert ADDRESS in html and html.rstrip().endswith("</body></html>")


def test_without_secret_only_the_mailto_and_no_footer(db):
    owner = new_owner()
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS))
    payload = send_first_email(enrollment, get_settings())
    with session_scope() as session:
        token = session.get(Enrollment, enrollment).reply_token
    mailto = f"mailto:reply+{token}@{get_settings().reply_domain}?subject=unsubscribe"
    assert {k: v for k, v in payload["headers"].items() if k != "Message-ID"} == {"List-Unsubscribe": f"<{mailto}>"}
    assert payload["content"][0]["value"] == "Hi Pat"


def test_the_mailto_unsubscribe_through_inbound_parse_opts_out_for_that_owner(configured, client):
    owner, other_owner = new_owner(), new_owner()
    email = f"{unique('seller')}@example.com"
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS), seller_email=email)
    second = new_enrollment(owner, new_sequence(owner, STEPS), seller_email=email)  # same owner, other deal
    elsewhere = new_enrollment(other_owner, new_sequence(other_owner, STEPS), seller_email=email)
    header = send_first_email(enrollment, configured)["headers"]["List-Unsubscribe"]
    [mailto] = [u for u in re.findall(r"<([^>]+)>", header) if u.startswith("mailto:")]
    address, _, query = mailto.removeprefix("mailto:").partition("?")
    # What a mail client sends for the mailto, as SendGrid Inbound Parse posts it.
    body, content_type = multipart({
        "to": address, "from": f"Pat <{email}>", "subject": parse_qs(query)["subject"][0], "text": "",
        "headers": f"Message-ID: <{unique('m')}@example.com>\nSubject: unsubscribe",
    })
    answer = client.post("/webhooks/sendgrid/inbound", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200 and answer.json()["stopped"] == 2
    for stopped in (enrollment, second):
        assert enrollment_status(stopped) == "STOPPED"
        [stop] = [e for e in events_of(stopped) if e.event_type == "STOPPED"]
        assert stop.content["reason_code"] == "unsubscribed"
    [fact] = [e for e in events_of(enrollment) if e.event_type == "OPTED_OUT"]
    assert fact.content["channel"] == "email" and fact.content["email"] == email
    assert enrollment_status(elsewhere) == "ACTIVE"
    with session_scope() as session:
        assert email_opted_out(session, email, owner) and not email_opted_out(session, email, other_owner)


def test_the_console_provider_shows_the_headers(configured):
    from followups.providers.messages import OutgoingEmail

    console = Console(record=True, width=200)
    email = OutgoingEmail("a@example.com", "A", "S", "body", None, headers={"List-Unsubscribe": "<https://x/u/t>"})
    send_email_console(email, console)
    shown = console.export_text()
    assert "List-Unsubscribe" in shown and "<https://x/u/t>" in shown


def test_get_shows_a_page_and_opts_nobody_out(configured, client):
    owner = new_owner()
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS))
    url = one_click_url(send_first_email(enrollment, configured))
    before = rows()
    page = client.get(urlsplit(url).path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    [form] = forms(page.text)
    # Posts back to the link itself (a relative action would drop a path prefix).
    assert form["method"] == "post" and urljoin(url, form["action"]) == url
    assert form["inputs"] == [{"type": "hidden", "name": "List-Unsubscribe", "value": "One-Click"}]
    assert rows() == before and enrollment_status(enrollment) == "ACTIVE"


def test_behind_a_path_prefix_the_page_posts_to_the_prefixed_link(configured, client, monkeypatch):
    monkeypatch.setenv("FOLLOWUPS_PUBLIC_BASE_URL", BASE + "/offers")
    reset_settings()
    owner = new_owner()
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS))
    url = one_click_url(send_first_email(enrollment, get_settings()))
    assert url.startswith(f"{BASE}/offers/u/")
    # The proxy strips the prefix before the app sees the request.
    page = client.get(urlsplit(url).path.removeprefix("/offers"))
    [form] = forms(page.text)
    assert urljoin(url, form["action"]) == url


def test_a_hostile_token_is_never_rendered_into_the_page(configured, client):
    for token in ['"><script>alert(1)</script>', "v1.1.1.0.1.<b>x</b>", "a&quot;b"]:
        page = client.get(f"/u/{quote(token, safe='')}")
        assert page.status_code == 404
        assert "<script>" not in page.text and "<b>" not in page.text and "&quot;b" not in page.text
        assert forms(page.text) == []


def test_a_real_one_click_post_opts_out_for_that_owner_and_stops_the_sequences(configured, client):
    owner, other_owner = new_owner(), new_owner()
    email = f"{unique('seller')}@example.com"
    sequence = new_sequence(owner, STEPS)
    enrollment = new_enrollment(owner, sequence, seller_email=email)
    second = new_enrollment(owner, new_sequence(owner, STEPS), seller_email=email)  # same owner, other deal
    elsewhere = new_enrollment(other_owner, new_sequence(other_owner, STEPS), seller_email=email)
    url = one_click_url(send_first_email(enrollment, configured))
    # What Gmail sends for List-Unsubscribe-Post (RFC 8058 section 3.2).
    answer = client.post(
        urlsplit(url).path, content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200 and "Unsubscribed" in answer.text
    for stopped in (enrollment, second):
        assert enrollment_status(stopped) == "STOPPED"
        [stop] = [e for e in events_of(stopped) if e.event_type == "STOPPED"]
        assert stop.content["reason"] == "unsubscribed" and stop.content["reason_code"] == "unsubscribed"
    [fact] = [e for e in events_of(enrollment) if e.event_type == "OPTED_OUT"]
    assert fact.step_index == 0 and fact.content["channel"] == "email" and fact.content["email"] == email
    assert enrollment_status(elsewhere) == "ACTIVE"
    with session_scope() as session:
        assert email_opted_out(session, email, owner) and not email_opted_out(session, email, other_owner)
    before = rows()
    assert client.post(urlsplit(url).path, content=b"List-Unsubscribe=One-Click").status_code == 200
    assert rows() == before  # idempotent


def test_forged_other_owner_and_expired_links_are_refused(configured, client):
    owner = new_owner()
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS))
    path = urlsplit(one_click_url(send_first_email(enrollment, configured))).path
    token = path.rsplit("/", 1)[1]
    version, owner_part, enrollment_part, step, day, mac = token.split(".")
    forged_mac = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    forged = [
        ".".join([version, owner_part, enrollment_part, step, day, forged_mac]),
        ".".join([version, str(new_owner()), enrollment_part, step, day, mac]),  # another owner
        ".".join([version, owner_part, enrollment_part, "2", day, mac]),
        ".".join([version, owner_part, enrollment_part, step, str(int(day) - 1), mac]),
        "v1.1.1.0.1.AAAAAAAAAAAAAAAAAAAAAA",
        "not-a-token",
    ]
    before = rows()
    for bad in forged:
        assert client.get(f"/u/{quote(bad)}").status_code == 404, bad
        assert client.post(f"/u/{quote(bad)}", content=b"List-Unsubscribe=One-Click").status_code == 404, bad
    # A genuine link past its age: 410, and nothing happens.
    email = events_of(enrollment)[-1].content["to"]
    old = make_token(owner, enrollment, 0, email, day=_today() - configured.unsubscribe_link_max_age_days - 1)
    with pytest.raises(InvalidTokenError):
        verify_token(old)
    assert client.post(f"/u/{old}", content=b"List-Unsubscribe=One-Click").status_code == 410
    assert rows() == before and enrollment_status(enrollment) == "ACTIVE"


def test_a_forged_token_is_refused_before_any_database_read(configured, client, monkeypatch):
    owner = new_owner()
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS))
    email = f"{unique('x')}@example.com"
    token = make_token(owner, enrollment, 0, email)
    prefix, mac = token.rsplit(".", 1)
    # The last character carries 4 spare bits: a variant decoding to the same bytes is forged too.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    same_bytes = alphabet[alphabet.index(mac[-1]) | 1]
    forged = [
        f"{prefix}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}",  # the ids tag altered
        f"v1.{owner}.{enrollment + 1}.0.{token.split('.')[4]}.{mac}",  # another enrollment
        f"v1.{owner + 1}.{enrollment}.0.{token.split('.')[4]}.{mac}",  # another owner
        f"{prefix}.{mac[:-1]}{same_bytes}",
    ]

    def no_database(*args, **kwargs):
        raise AssertionError("a forged token reached the database")

    with monkeypatch.context() as patched:
        patched.setattr("followups.unsubscribe.session_scope", no_database)
        for bad in forged:
            with pytest.raises(InvalidTokenError):
                verify_token(bad)
            assert client.get(f"/u/{bad}").status_code == 404
            assert client.post(f"/u/{bad}", content=b"List-Unsubscribe=One-Click").status_code == 404
        # The genuine token does read the database (the patch is what refused the forged ones).
        with pytest.raises(AssertionError, match="reached the database"):
            verify_token(token)
    # Genuine ids with another address tag: refused once the addresses are read.
    with pytest.raises(InvalidTokenError):
        verify_token(f"{prefix}.{mac[:-2]}{'A' if mac[-2] != 'A' else 'B'}{mac[-1]}")


def test_a_token_from_another_secret_is_refused(configured, monkeypatch):
    owner = new_owner()
    enrollment = new_enrollment(owner, new_sequence(owner, STEPS))
    email = f"{unique('x')}@example.com"
    token = make_token(owner, enrollment, 0, email)
    monkeypatch.setenv("FOLLOWUPS_UNSUBSCRIBE_SECRET", "another-secret")
    reset_settings()
    with pytest.raises(InvalidTokenError):
        verify_token(token)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(token=st.text(min_size=1, max_size=300).filter(lambda s: s not in (".", "..")), body=st.binary(max_size=200))
def test_hostile_tokens_and_bodies_never_5xx_and_store_nothing(configured, client, token, body):
    # `deliver` is the one writer behind an unsubscribe. (Counting the event table would also
    # count what the session's runs and the other xdist worker's tests write meanwhile.)
    stored = []
    path = f"/u/{quote(token, safe='')}"
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr("followups.unsubscribe.deliver", lambda *args, **kwargs: stored.append(args))
        assert client.get(path).status_code in (404, 422)
        assert client.post(path, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code in (404, 422)
    assert stored == []
