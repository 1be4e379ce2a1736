"""What a seller's message means: an opt-out keyword, an opt-in keyword, or a reply.

An SMS revokes consent (`sms_revocation`) when one of its sentences (split at . ! ? ; and line
breaks; case, punctuation and apostrophes ignored; a leading "please" and a trailing "please",
"thanks" or "now" allowed) is exactly an opt-out keyword (the FCC's per-se reasonable words
stop, quit, end, revoke, opt out, cancel, unsubscribe, and Twilio's STOPALL / OPTOUT) or a short
revocation phrase ("stop texting me", "remove me", "do not contact me", "take me off your
list", ...). Words inside a longer sentence never count, so "I can't stop thinking about your
offer" or "Stop by tomorrow?" stay replies.
"""

from __future__ import annotations

import re

# Twilio's opt-out keywords on long codes (the message is the keyword alone, any case).
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})

_SENTENCES = re.compile(r"[.!?;\n]+")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_CORE = (
    r"stop|stop all|stopall|quit|end|revoke|cancel|unsubscribe|opt out|optout"
    r"|(?:stop|quit) (?:texting|txting|messaging|contacting|calling|sending (?:me )?(?:texts|messages))(?: me)?"
    r"|(?:do not|dont|never) (?:contact|text|txt|message|call)(?: me)?(?: again)?"
    r"|(?:remove|take) me (?:off|from)(?: (?:your|this|the) (?:list|contacts|texts))?|remove me"
    r"|unsubscribe me|opt me out|i (?:want to |would like to )?opt out|no more (?:texts|messages)"
    r"|(?:i )?revoke(?: my)? consent|leave me alone"
)
_REVOCATION = re.compile(rf"(?:please |pls )?(?:{_CORE})(?: please| thanks| thank you| now)?")


def keyword(body: str | None) -> str:
    """The message as a keyword: trimmed, upper-cased, without trailing punctuation."""
    return (body or "").strip().rstrip(".!").strip().upper()


def is_opt_out(body: str | None) -> bool:
    return keyword(body) in OPT_OUT_KEYWORDS


def is_opt_in(body: str | None) -> bool:
    return keyword(body) in OPT_IN_KEYWORDS


def sms_revocation(body: str | None) -> str | None:
    """The sentence of an SMS that revokes consent (normalised, upper-cased), or None."""
    for sentence in _SENTENCES.split((body or "").lower().replace("'", "").replace("\u2019", "")):
        words = _NOT_WORD.sub(" ", sentence).strip()
        if words and _REVOCATION.fullmatch(words):
            return words.upper()
    return None
