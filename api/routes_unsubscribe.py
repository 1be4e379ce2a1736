"""`/u/{token}`: one-click unsubscribe (RFC 8058) and its confirmation page. No bearer token:
the signed link is the authority (`followups.unsubscribe`).

GET never changes anything (mail scanners and link previews fetch every URL in a message): it
shows a page whose button POSTs. POST (what Gmail and Yahoo send for `List-Unsubscribe-Post`,
body `List-Unsubscribe=One-Click`) opts the address out for the owner whose mail it was.
Every answer is a small HTML page; a bad or forged link is a 404, an expired one a 410.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from followups.api.errors import ErrorBody, ValidationErrorBody
from followups.unsubscribe import InvalidTokenError, unsubscribe, verify_token

router = APIRouter(tags=["unsubscribe"])

HTML_PAGE = {"text/html": {"schema": {"type": "string"}}}
RESPONSES = {
    404: {"description": "Not a valid unsubscribe link", "content": HTML_PAGE},
    410: {"description": "An expired unsubscribe link", "content": HTML_PAGE},
    413: {"description": "Request body over the size limit", "model": ErrorBody},
    422: {"description": "Unknown query parameters", "model": ValidationErrorBody},
    503: {"description": "The database is unreachable", "model": ErrorBody},
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em">'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    # Nobody should cache or index a personal link's page.
    return HTMLResponse(document, status_code=status, headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


def _invalid(exc: InvalidTokenError) -> HTMLResponse:
    if exc.expired:
        return _page("Link expired", "<p>This unsubscribe link has expired. Reply to the email with “unsubscribe” instead.</p>", 410)
    return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)


def _masked(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


@router.get("/u/{token}", response_class=HTMLResponse, responses={200: {"content": HTML_PAGE}} | RESPONSES)
async def confirm_page(token: str) -> HTMLResponse:
    """A page that asks to confirm; its button POSTs. Opts nobody out."""
    try:
        target = await run_in_threadpool(verify_token, token)
    except InvalidTokenError as exc:
        return _invalid(exc)
    form = (
        f"<p>Stop emails about this offer to {html.escape(_masked(target.email))}?</p>"
        # An empty action posts back to this very URL, so the link works behind a path prefix
        # in public_base_url; the token itself is never written into the page.
        '<form method="post" action="">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page("Unsubscribe", form)


@router.post(
    "/u/{token}",
    response_class=HTMLResponse,
    responses={200: {"content": HTML_PAGE}} | RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": {"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}}}
                }
            },
        }
    },
)
async def one_click(token: str, request: Request) -> HTMLResponse:
    """Opt the link's address out of its owner's emails and stop that owner's open sequences for
    it. The body (`List-Unsubscribe=One-Click`) is not needed: the signed link is what counts."""
    await request.body()  # read (bounded by the size limit) and ignored
    try:
        await run_in_threadpool(unsubscribe, token)
    except InvalidTokenError as exc:
        return _invalid(exc)
    return _page("Unsubscribed", "<p>You will not get these emails any more.</p>")
