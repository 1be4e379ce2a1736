"""What a seller's message means: an opt-out keyword, an opt-in keyword, or a reply."""

from __future__ import annotations

# Twilio's opt-out keywords on long codes (the message is the keyword alone, any case).
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})


def keyword(body: str | None) -> str:
    """The message as a keyword: trimmed, upper-cased, without trailing punctuation."""
    return (body or "").strip().rstrip(".!").strip().upper()


def is_opt_out(body: str | None) -> bool:
    return keyword(body) in OPT_OUT_KEYWORDS


def is_opt_in(body: str | None) -> bool:
    return keyword(body) in OPT_IN_KEYWORDS
