"""Replies and opt-outs: what a seller's message means, whose enrollments it concerns, and how
it stops them. The webhooks parse and verify; these rules decide."""

from followups.replies.delivery import Outcome, SellerFact, dedupe_key, deliver, stop_enrollment
from followups.replies.keywords import OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS, is_opt_in, is_opt_out, keyword
from followups.replies.routing import enrollments_for_phone, open_enrollments_for_email
from followups.replies.suppression import email_opted_out, sms_opted_out

__all__ = [
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "Outcome",
    "SellerFact",
    "dedupe_key",
    "deliver",
    "email_opted_out",
    "enrollments_for_phone",
    "is_opt_in",
    "is_opt_out",
    "keyword",
    "open_enrollments_for_email",
    "sms_opted_out",
    "stop_enrollment",
]
