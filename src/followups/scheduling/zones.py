"""Whose clock a send window is read on: the recipient's time zone, or zones when unsure.

The deal's `seller_timezone`, when the deal gave one, alone decides: the seller (or whoever
entered the deal) said where they are, which beats any guess from a phone number. A deal that
gives no zone is stored as "UTC", so "UTC" counts as not given (a seller who really lives on UTC
is treated the same, which for sending hours is the same answer anyway).

Without it, an SMS is read on the phone number's zone (libphonenumber's geocoding) when the
number names exactly one. A number that names several (an area code across two zones, a
toll-free range: every NANP zone) or none (its country calling code's zones stand in, so a US
or Canadian number is never read on UTC) is uncertain: its candidates are all those zones plus
the owner's, and a send must be allowed in every one of them (`send_times`). An email, and an
SMS to no usable number, is read on the owner's zone; else UTC.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import available_timezones

import phonenumbers
from phonenumbers import timezone as phone_timezones

UNKNOWN_ZONE = "Etc/Unknown"


@lru_cache(maxsize=4096)
def zones_of_phone(phone: str | None) -> tuple[str, ...]:
    """Every IANA zone a phone number may be in: libphonenumber's zones for the number, else its
    calling code's; () when it is not a number. Zones this machine's tzdata lacks are left out."""
    if not phone:
        return ()
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = _known(phone_timezones.time_zones_for_number(number))
    if not zones:
        zones = _known(phone_timezones.TIMEZONE_DATA.get(str(number.country_code), ()))
    return zones


def _known(zones: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(zone for zone in zones if zone != UNKNOWN_ZONE and zone in _known_zones())


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def recipient_zones(
    channel: str, seller_timezone: str | None, seller_phone: str | None = None, owner_timezone: str | None = None
) -> tuple[tuple[str, ...], str]:
    """(candidate zones, where they came from: deal | phone | phone+owner | owner | default) for a
    message on `channel`. The first zone is the one shown and the one a WAIT counts days on: the
    owner's when it is a candidate, the number's own otherwise."""
    if seller_timezone and seller_timezone != "UTC":
        return (seller_timezone,), "deal"
    if channel == "sms":
        found = zones_of_phone(seller_phone)
        if len(found) == 1:
            return found, "phone"
        if found:
            if not owner_timezone:
                return found, "phone"
            return (owner_timezone, *(zone for zone in found if zone != owner_timezone)), "phone+owner"
    if owner_timezone:
        return (owner_timezone,), "owner"
    return ("UTC",), "default"


def recipient_zone(
    channel: str, seller_timezone: str | None, seller_phone: str | None = None, owner_timezone: str | None = None
) -> tuple[str, str]:
    """(zone, where it came from) for a message on `channel`: the first of `recipient_zones`."""
    zones, source = recipient_zones(channel, seller_timezone, seller_phone, owner_timezone)
    return zones[0], source
