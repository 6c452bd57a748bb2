"""Phone numbers: strict E.164 validation and masking for logs."""

from __future__ import annotations

import re

import phonenumbers


def normalize_e164(raw: str) -> str | None:
    """The E.164 form of `raw` if phonenumbers deems it a valid number, else None.

    Only international form is accepted (a leading `+`, or `whatsapp:+…`): a
    messaging service guessing a region would send to the wrong country.
    """
    text = raw.strip()
    if text.startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    if not text.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask(number: str | None) -> str:
    """`+15551234567` → `+1******4567`: enough to correlate, not enough to dial."""
    if not number:
        return ""
    prefix = "whatsapp:" if number.startswith("whatsapp:") else ""
    digits = number[len(prefix) :]
    if len(digits) <= 6:
        return prefix + "*" * len(digits)
    return f"{prefix}{digits[:2]}{'*' * (len(digits) - 6)}{digits[-4:]}"


# An international number (`+` then 7-15 digits, maybe spaced) or a bare WhatsApp id
# (11-15 digits, country code included); not IP addresses, versions or timestamps.
_PHONE_RE = re.compile(r"(?<![\w.])(?:\+\d[\d -]{5,17}\d|\d{11,15})(?!\w|\.\d)")


def mask_text(text: str) -> str:
    """Mask every phone-number-like run in free text (log lines, error messages)."""
    return _PHONE_RE.sub(lambda m: mask(re.sub(r"[\s-]", "", m.group(0))), text)
