"""Whose clock a send window is read on: the recipient's time zone.

The deal's `seller_timezone` when the deal gave one; for an SMS without one, the zone of the
phone number (libphonenumber's geocoding) when that names exactly one zone; otherwise the
owner's zone when there is one; else UTC. A deal that gives no zone is stored as "UTC", so
"UTC" counts as not given: a seller who really lives on UTC is treated the same, which for
sending hours is the same answer anyway.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import available_timezones

import phonenumbers
from phonenumbers import timezone as phone_timezones

UNKNOWN_ZONE = "Etc/Unknown"


@lru_cache(maxsize=4096)
def zone_of_phone(phone: str | None) -> str | None:
    """The one IANA zone a phone number belongs to, or None when it is unknown or ambiguous.

    An ambiguous number (a US toll-free or a non-geographic range, an area code spanning two
    zones) gives None rather than a guess: quiet hours read on the wrong clock could text
    someone at night, so the caller falls back to a zone it was told.
    """
    if not phone:
        return None
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    zones = [zone for zone in phone_timezones.time_zones_for_number(number) if zone != UNKNOWN_ZONE]
    # libphonenumber's zone list can name a zone this machine's tzdata lacks: no guess then either.
    return zones[0] if len(zones) == 1 and zones[0] in _known_zones() else None


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def recipient_zone(
    channel: str, seller_timezone: str | None, seller_phone: str | None = None, owner_timezone: str | None = None
) -> tuple[str, str]:
    """(zone, where it came from: deal | phone | owner | default) for a message on `channel`."""
    if seller_timezone and seller_timezone != "UTC":
        return seller_timezone, "deal"
    if channel == "sms":
        found = zone_of_phone(seller_phone)
        if found:
            return found, "phone"
    if owner_timezone:
        return owner_timezone, "owner"
    return "UTC", "default"
