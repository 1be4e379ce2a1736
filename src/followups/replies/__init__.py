"""Replies and opt-outs: what a seller's message means, whose enrollments it concerns, and how
it stops them. The webhooks parse and verify; these rules decide."""

from followups.replies.delivery import Outcome, SellerFact, dedupe_key, deliver, stop_enrollment
from followups.replies.inbound_sms import InboundSms, receive_sms
from followups.replies.keywords import OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS, is_opt_in, is_opt_out, keyword, sms_revocation
from followups.replies.routing import (
    SmsRoute,
    conversation_owner,
    enrollments_for_message_ids,
    enrollments_for_phone,
    open_enrollments_for_email,
    open_enrollments_of_owners,
    other_channel_enrollments,
    owner_of_enrollment,
    owners_of_number,
    route_inbound_sms,
)
from followups.replies.suppression import email_opted_out, email_suppressed, sms_opted_out, sms_stop_covers_email

__all__ = [
    "InboundSms",
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "Outcome",
    "SellerFact",
    "SmsRoute",
    "conversation_owner",
    "dedupe_key",
    "deliver",
    "email_opted_out",
    "email_suppressed",
    "enrollments_for_message_ids",
    "enrollments_for_phone",
    "is_opt_in",
    "is_opt_out",
    "keyword",
    "open_enrollments_for_email",
    "open_enrollments_of_owners",
    "other_channel_enrollments",
    "owner_of_enrollment",
    "owners_of_number",
    "receive_sms",
    "route_inbound_sms",
    "sms_opted_out",
    "sms_revocation",
    "sms_stop_covers_email",
    "stop_enrollment",
]
