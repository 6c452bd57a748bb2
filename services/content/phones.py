"""Phone numbers: strict E.164 validation and WhatsApp id forms (masking for logs is
core/logs.py)."""

from __future__ import annotations

import functools
import re

import phonenumbers

NOT_INTERNATIONAL = (
    "Not a phone number in international format (E.164: '+', the country code, the number, "
    "like +12025550143)."
)
# After the `+`: digits and the separators people write; anything else is refused
# rather than guessed at (phonenumbers would read letters as a vanity number).
_INTERNATIONAL = re.compile(r"\+[0-9 ().-]+")
# What a phone field takes, as the API document states it (the number must also be valid).
PHONE_PATTERN = r"^\s*(whatsapp:)?" + _INTERNATIONAL.pattern + r"\s*$"
PHONE_FIELD = {
    "description": "A phone number in international (E.164) form: '+', the country code, the "
    "number, like +12025550143; spaces, dots, dashes and brackets are ignored, a "
    "'whatsapp:' prefix is allowed. It must be a valid number of its country.",
    "pattern": PHONE_PATTERN,
    "example": "+12025550143",
}
# Meta's business-scoped user id (BSUID), the `user_id` of WhatsApp webhooks: a two-letter
# country code, a period, then up to 128 letters and digits (`US.13491208655302741918`);
# a parent BSUID, shared by linked business portfolios, has `ENT.` after the country
# (`US.ENT.11815799212886844830`). Kept and sent back exactly as received.
BSUID_PATTERN = r"^[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}$"
# What a message's `to` takes: a phone number, or on WhatsApp a business-scoped user id.
TO_PATTERN = f"{PHONE_PATTERN}|{BSUID_PATTERN}"
TO_FIELD = {
    "description": "The recipient: a phone number in international (E.164) form, like "
    "+12025550143 (spaces, dots, dashes and brackets ignored, a 'whatsapp:' prefix allowed; "
    "a valid number of its country), or on WhatsApp a business-scoped user id (BSUID) "
    "exactly as a webhook gave it, like US.13491208655302741918 (a user with a username may "
    "share no phone number). A BSUID on SMS is refused: 422 `whatsapp_only_recipient`.",
    "pattern": TO_PATTERN,
    "example": "+12025550143",
}
_LETTER = re.compile(r"[A-Za-z]")
_IMPOSSIBLE = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "Unknown country calling code.",
    phonenumbers.ValidationResult.TOO_SHORT: "Too short for a number of its country",
    phonenumbers.ValidationResult.TOO_LONG: "Too long for a number of its country",
    phonenumbers.ValidationResult.INVALID_LENGTH: "Not a valid length for a number of its country",
}


def parse_e164(raw: str) -> str:
    """The E.164 form of `raw`, or ValueError with a message fit for the client.
    Numbers already seen (a process's recent recipients) are answered from a cache:
    parsing and validating one is a seventh of what accepting a message costs.

    Only international form is accepted (a leading `+`, or `whatsapp:+…`): a
    messaging service guessing a region would send to the wrong country. Letters
    are refused, not converted as a vanity number.
    """
    return _parse_e164(raw)


@functools.lru_cache(maxsize=4096)  # valid numbers only: an error is not cached
def _parse_e164(raw: str) -> str:
    text = raw.strip()
    if text.startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    if _LETTER.search(text):
        raise ValueError("Letters are not allowed in a phone number.")
    if not _INTERNATIONAL.fullmatch(text):
        raise ValueError(NOT_INTERNATIONAL)
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            raise ValueError("Unknown country calling code.") from None
        raise ValueError(NOT_INTERNATIONAL) from None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason in _IMPOSSIBLE:
        detail = _IMPOSSIBLE[reason]
        if reason != phonenumbers.ValidationResult.INVALID_COUNTRY_CODE:
            detail += f" (+{parsed.country_code})."
        raise ValueError(detail)
    # is_valid_number, in its two steps: the region it finds is kept for `region_of`.
    region = phonenumbers.region_code_for_number(parsed)
    if not phonenumbers.is_valid_number_for_region(parsed, region):
        raise ValueError(f"Not a valid number for its country (+{parsed.country_code}).")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if len(_REGIONS) >= _REGIONS_KEPT:
        _REGIONS.clear()
    _REGIONS[e164] = region
    return e164


# The region (ISO 3166) of each number this process validated: finding it is most of
# what validating costs (for +1, a pattern walk over the NANP regions), and the SMS
# guard (services/policy/destinations.py) asks it again for the same recipient.
_REGIONS: dict[str, str | None] = {}
_REGIONS_KEPT = 8192


def region_of(e164: str) -> str | None:
    """The region of a valid E.164 number (None: not one, or no single region)."""
    if e164 in _REGIONS:
        return _REGIONS[e164]
    try:  # not validated here lately (or forgotten since): found afresh
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(parsed)
    if not phonenumbers.is_valid_number_for_region(parsed, region):
        return None
    if len(_REGIONS) >= _REGIONS_KEPT:
        _REGIONS.clear()
    _REGIONS[e164] = region  # a tenant's own numbers are asked about on every SMS
    return region


def normalize_e164(raw: str) -> str | None:
    """The E.164 form of `raw` if it is a valid international number, else None
    (see `parse_e164` for the reason)."""
    try:
        return parse_e164(raw)
    except ValueError:
        return None


# WhatsApp ids (`wa_id`) that differ from the number dialled, for the same person: Meta's
# send answer (`contacts[0].wa_id`) and every inbound `from` use the WhatsApp id.
# Brazil: mobiles got a ninth digit (9) in 2012, but accounts registered before keep the
# 8-digit id (mostly outside area codes 11-19, 21, 22, 24, 27, 28). Mexico: the mobile
# prefix 1 after 52 was dropped from dialling in 2019, old ids keep it (521...).
# Argentina: mobiles are dialled 54 9 <area> <number>; the id always has the 9.
# Each form and the other form of the same user: (its pattern, the other's format).
_OTHER_FORM = (
    (re.compile(r"\+55(\d{2})9([6-9]\d{7})"), "+55{0}{1}"),  # Brazil, with the ninth digit
    (re.compile(r"\+55(\d{2})([6-9]\d{7})"), "+55{0}9{1}"),  # Brazil, without it
    (re.compile(r"\+521([2-9]\d{9})"), "+52{0}"),  # Mexico, with the 1
    (re.compile(r"\+52([2-9]\d{9})"), "+521{0}"),  # Mexico, without it
    (re.compile(r"\+549([1-3]\d{9})"), "+54{0}"),  # Argentina, with the 9
    (re.compile(r"\+54([1-3]\d{9})"), "+549{0}"),  # Argentina, without it
)


def whatsapp_forms(e164: str) -> list[str]:
    """The number and the other form the same WhatsApp user can have (with or without
    Brazil's ninth digit, Mexico's 1, Argentina's 9): a contact is the same person
    whichever form Herald dialled or the provider reports."""
    for pattern, other in _OTHER_FORM:
        if m := pattern.fullmatch(e164):
            return [e164, other.format(*m.groups())]
    return [e164]


_BSUID = re.compile(BSUID_PATTERN)
NOT_BSUID = (
    "Not a WhatsApp business-scoped user id: two capital letters (a country), a period, "
    "then up to 128 letters and digits, like US.13491208655302741918."
)


def looks_like_bsuid(raw: str) -> bool:
    """Whether `raw` is meant as a BSUID rather than a phone number: it starts with two
    letters and a period (a number never holds letters)."""
    return len(raw) > 3 and raw[:2].isalpha() and raw[2] == "."


def parse_bsuid(raw: str) -> str:
    """`raw` as a BSUID (unchanged: Meta's own spelling), or ValueError for the client."""
    text = raw.strip()
    if not _BSUID.fullmatch(text):
        raise ValueError(NOT_BSUID)
    return text


def is_bsuid(value: str | None) -> bool:
    """Whether a stored address is a BSUID (a phone number is `+` and digits)."""
    return bool(value) and _BSUID.fullmatch(value or "") is not None
