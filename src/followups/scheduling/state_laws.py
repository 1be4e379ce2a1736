"""US state texting laws stricter than the TCPA, as data, and the lookups that read it.

Each `StateLaw` is one version of one state's rule for marketing texts: the hours by weekday on
the recipient's clock, no texts on the state's holidays, and a cap on texts to one person per
rolling 24 hours. A version is in force from its `effective` date (the recipient's local date)
until a later version of the same state takes over. `citation` names the statute; "to confirm"
marks a section number not yet checked against the statute's own text (the hours and caps
themselves were checked against the cited text or against at least one published summary).
A change of law is a new row with a higher `version`, never an edit of an old one, so past
deferrals can still be explained. Applied by `send_times` (hours) and `execution.deferral`
(the cap); not legal advice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from functools import lru_cache

import phonenumbers
from phonenumbers import geocoder

TABLE_VERSION = "2026-12-07"

Hours = tuple[time, time]  # [start, end) on the recipient's wall clock
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _week(start: str, end: str, *, sunday: tuple[str, str] | None | bool = True) -> tuple[Hours | None, ...]:
    """Mon-Sat `start`-`end`; Sunday the same (True), other hours, or none (None)."""
    hours = (time.fromisoformat(start), time.fromisoformat(end))
    sun = hours if sunday is True else None if sunday is None else (time.fromisoformat(sunday[0]), time.fromisoformat(sunday[1]))
    return (hours,) * 6 + (sun,)


@dataclass(frozen=True)
class StateLaw:
    state: str  # USPS code
    name: str
    version: int
    effective: date
    hours: tuple[Hours | None, ...]  # Monday..Sunday; None: no texts that day
    citation: str
    zones: tuple[str, ...]  # the state's clocks, for a seller who may be at the property
    no_holidays: bool = False  # none on the state's legal holidays (`holidays`, US subdivision)
    cap: int | None = None  # texts to one person per rolling 24 hours
    cap_citation: str = ""

    def hours_text(self) -> str:
        groups: list[tuple[list[str], Hours | None]] = []
        for day, hours in zip(_DAYS, self.hours, strict=True):
            if groups and groups[-1][1] == hours:
                groups[-1][0].append(day)
            else:
                groups.append(([day], hours))
        parts = [
            (f"{h[0]:%H:%M}–{h[1]:%H:%M}" if h else "none")
            + ("" if len(groups) == 1 else f" {days[0]}" + (f"–{days[-1]}" if len(days) > 1 else ""))
            for days, h in groups
        ]
        return ", ".join(parts) + (", none on state holidays" if self.no_holidays else "")

    def describe(self) -> str:
        """What a deferral by these hours says, e.g. "Florida: 08:00–20:00 (Fla. Stat. …)"."""
        return f"{self.name}: {self.hours_text()} ({self.citation})"

    def describe_cap(self) -> str:
        return f"{self.name}: at most {self.cap} texts to one person in 24 h ({self.cap_citation})"

    def holiday(self, day: date) -> str | None:
        return _state_holidays(self.state, day.year).get(day) if self.no_holidays else None


# In force before this table's first version; the enactment date is not recorded here.
LONG_STANDING = date.min
EASTERN, CENTRAL, MOUNTAIN, PACIFIC = "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"

STATE_LAWS: tuple[StateLaw, ...] = (
    StateLaw(
        "FL", "Florida", 1, date(2021, 7, 1), _week("08:00", "20:00"),
        # The brief's "(6)(b)" for the hours: the 2021 text puts the hours in (6)(a), the cap in (6)(b)
        # (SB 1120 of 2021; both checked against the statute's text).
        "Fla. Stat. §501.616(6)(a)", (EASTERN, CENTRAL),
        cap=3, cap_citation="Fla. Stat. §501.616(6)(b), on the same subject",
    ),
    StateLaw(
        "OK", "Oklahoma", 1, date(2022, 11, 1), _week("08:00", "20:00"),
        # Hours and cap confirmed against HB 3168 (2022) summaries; the section holding them is not yet
        # read (§775C.2 is the definitions, §775C.5 the exemptions).
        "15 Okla. Stat. §775C.4 (Telephone Solicitation Act of 2022), section to confirm", (CENTRAL,),
        cap=3, cap_citation="15 Okla. Stat. §775C.4 (Telephone Solicitation Act of 2022), section to confirm; on the same subject",
    ),
    StateLaw(
        "MD", "Maryland", 1, date(2024, 1, 1), _week("08:00", "20:00"),
        # §14-4502 is the Act's prohibitions section (§14-4501 the definitions); the subsection with the
        # hours and the cap is not yet read.
        "Md. Code Com. Law §14-4502 (Stop the Spam Calls Act), subsection to confirm", (EASTERN,),
        cap=3, cap_citation="Md. Code Com. Law §14-4502, subsection to confirm; on the same subject",
    ),
    StateLaw(
        "WA", "Washington", 1, LONG_STANDING, _week("08:00", "20:00"),
        # 19.158.040(2) read verbatim; a summary of ESHB 1497 (2021) says it put the same hours in RCW 80.36.390.
        "RCW 19.158.040(2); RCW 80.36.390 (as amended 2021), subsection to confirm", (PACIFIC,),
    ),
    StateLaw(
        "TX", "Texas", 1, date(2025, 9, 1), _week("09:00", "21:00", sunday=("12:00", "21:00")),
        # Hours from SB 140 summaries; SB 140 itself adds "telephone call" (texts included) to ch. 302's
        # definitions. That §301.051 holds the hours and reaches texts is not yet read in its text.
        "Tex. Bus. & Com. Code §301.051, section to confirm; texts covered by SB 140 (2025), ch. 302", (CENTRAL, MOUNTAIN),
    ),
    StateLaw(
        "AL", "Alabama", 1, LONG_STANDING, _week("08:00", "20:00", sunday=None),
        # Alabama PSC rule, read verbatim; it is written for automated solicitation calls.
        "Ala. Admin. Code r. 770-X-5-.17(1)(b)", (CENTRAL,), no_holidays=True,
    ),
    StateLaw(
        "LA", "Louisiana", 1, LONG_STANDING, _week("08:00", "20:00", sunday=None),
        # Read verbatim: ADAD or live-operator sales calls, 8-to-8 Mon-Sat, none on Sundays or state holidays.
        "La. R.S. 45:811(2)-(3)", (CENTRAL,), no_holidays=True,
    ),
    StateLaw(
        "KY", "Kentucky", 1, LONG_STANDING, _week("10:00", "21:00"),
        # 10-to-9 confirmed by a published summary; §367.46955 is the prohibited-practices section, but
        # the subsection is not yet read ((15) in the first draft; other public tables say (16)).
        "KRS 367.46955, subsection to confirm", (EASTERN, CENTRAL),
    ),
)

# USPS codes of the states, DC and the inhabited territories.
STATE_NAMES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California", "CO": "Colorado",
    "CT": "Connecticut", "DE": "Delaware", "DC": "District of Columbia", "FL": "Florida", "GA": "Georgia",
    "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois", "IN": "Indiana", "IA": "Iowa", "KS": "Kansas", "KY": "Kentucky",
    "LA": "Louisiana", "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts", "MI": "Michigan", "MN": "Minnesota",
    "MS": "Mississippi", "MO": "Missouri", "MT": "Montana", "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire",
    "NJ": "New Jersey", "NM": "New Mexico", "NY": "New York", "NC": "North Carolina", "ND": "North Dakota",
    "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania", "RI": "Rhode Island",
    "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee", "TX": "Texas", "UT": "Utah", "VT": "Vermont",
    "VA": "Virginia", "WA": "Washington", "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
    "PR": "Puerto Rico", "GU": "Guam", "VI": "United States Virgin Islands", "AS": "American Samoa",
    "MP": "Northern Mariana Islands",
}
# libphonenumber's names that are not the plain state name.
_GEOCODER_NAMES = {"Washington State": "WA", "Washington D.C.": "DC"}
_BY_NAME = {name: code for code, name in STATE_NAMES.items()} | _GEOCODER_NAMES


def law_in_force(state: str, day: date) -> StateLaw | None:
    """The newest version of `state`'s law in force on `day`, or None."""
    found = [law for law in STATE_LAWS if law.state == state and law.effective <= day]
    return max(found, key=lambda law: law.version) if found else None


def has_law(state: str) -> bool:
    return any(law.state == state for law in STATE_LAWS)


def strictest_cap(states: tuple[str, ...], day: date) -> StateLaw | None:
    """Of the laws in force for `states`, the one with the smallest texting cap."""
    laws = [law_in_force(state, day) for state in states]
    capped = [law for law in laws if law is not None and law.cap]
    return min(capped, key=lambda law: law.cap or 0) if capped else None


@lru_cache(maxsize=4096)
def state_of_phone(phone: str | None) -> str | None:
    """The USPS code of the state a US number's area code belongs to, or None (not a US number,
    toll-free, or a range libphonenumber does not place)."""
    if not phone:
        return None
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    if number.country_code != 1:
        return None
    place = geocoder.description_for_number(number, "en")
    # Some ranges are described by town: "Miami Beach, FL".
    code = place.rpartition(", ")[2] if ", " in place else _BY_NAME.get(place)
    return code if code in STATE_NAMES else None


@lru_cache(maxsize=64)
def _state_holidays(state: str, year: int) -> dict[date, str]:
    import holidays

    return dict(holidays.country_holidays("US", subdiv=state, years=year))
