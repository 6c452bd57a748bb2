"""How an SMS body is carried: its encoding and how many segments (billed parts) it
takes, and smart encoding, which swaps look-alike characters for GSM-7 ones.

GSM 03.38 packs 160 characters into one SMS, 153 per part once split (a part's header
takes the rest); `^{}\\[]~|€` and form feed take two (an escape and the character). One
character outside the set sends the whole body as UCS-2: 70 code units, 67 per part,
and a character beyond the Basic Multilingual Plane (most emoji) is two units. One curly
quote pasted from a word processor can so double a campaign's bill; smart encoding
replaces such characters, as Twilio's Messaging Services do, only when every character
left is then GSM-7 (else the body goes as written: nothing is gained by a half swap)."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import PolicyRefused

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# The GSM 03.38 basic character set (the default alphabet, without its escape).
_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each costs two septets.
_EXTENDED = frozenset("^{}\\[]~|€\f")

_SINGLE = {GSM7: 160, UCS2: 70}
_PART = {GSM7: 153, UCS2: 67}


def _table(pairs: dict[str, str]) -> dict[int, str]:
    return {ord(c): out for chars, out in pairs.items() for c in chars}


# Look-alikes and their GSM-7 stand-ins (the characters Twilio's Smart Encoding list
# names: quotation marks, primes and accents, dashes, spaces, the ellipsis, fullwidth
# punctuation), written as escapes so the source shows which character each is.
LOOKALIKES = _table(
    {
        # « » “ ” ʺ ˮ ‟ ❝ ❞ 〝 〞 and the fullwidth quotation mark
        "\u00ab\u00bb\u201c\u201d\u02ba\u02ee\u201f\u275d\u275e\u301d\u301e\uff02": '"',
        # single quotation marks, modifier apostrophes and primes, acute and grave accents
        "\u2018\u2019\u02bb\u02c8\u02bc\u02bd\u02b9\u201b\uff07\u00b4\u02ca\u0060\u02cb"
        "\u275b\u275c": "'",
        # hyphens, figure/en/em dashes, the minus sign, small and fullwidth forms, bullet
        "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u207b\u208b\u2212\ufe58\ufe63\uff0d\u2022": "-",
        # no-break, en, em, thin, hair, narrow and ideographic spaces
        "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f"
        "\u205f\u3000": " ",
        # zero-width space, joiners, word joiner, byte order mark
        "\u200b\u200c\u200d\u2060\ufeff": "",
        "\u2026": "...",  # ellipsis
        "\u201a": ",",  # single low-9 quotation mark
        "\u2044\u2215\uff0f": "/",  # fraction and division slashes, fullwidth solidus
        "\u2039\u02c2": "<",
        "\u203a\u02c3": ">",
        "\u01c3\uff01": "!",
        "\uff1b": ";",
        "\uff1a": ":",
        "\uff1f": "?",
        "\u00a6": "|",  # broken bar
        "\u02dc": "~",  # small tilde
        "\u02c6": "^",  # modifier circumflex
    }
)


@dataclass(frozen=True)
class SmsSize:
    """What a body costs: its encoding, the units it counts (septets, or UTF-16 units
    for UCS-2) and the segments it is billed as."""

    encoding: str
    units: int
    segments: int


def measure(body: str) -> SmsSize:
    """The encoding and segment count a carrier applies to `body`."""
    septets = 0
    for char in body:
        if char in _BASIC:
            septets += 1
        elif char in _EXTENDED:
            septets += 2
        else:
            units = len(body.encode("utf-16-le")) // 2
            return SmsSize(UCS2, units, _segments(UCS2, units))
    return SmsSize(GSM7, septets, _segments(GSM7, septets))


def _segments(encoding: str, units: int) -> int:
    if units <= _SINGLE[encoding]:
        return 1
    return -(-units // _PART[encoding])


def smart_encode(body: str) -> tuple[str, int]:
    """`body` with look-alikes replaced and how many were, when that makes it GSM-7;
    else `body` unchanged and 0."""
    if measure(body).encoding == GSM7:
        return body, 0
    swapped = body.translate(LOOKALIKES)
    if measure(swapped).encoding != GSM7:
        return body, 0
    return swapped, sum(1 for c in body if ord(c) in LOOKALIKES)


def fit(body: str, *, smart: bool, cap: int | None) -> tuple[str, int]:
    """The body to send and how many characters smart encoding swapped (`smart`: the
    tenant's setting); refuses (422 `too_many_segments`) a body billed as more than
    `cap` segments, before anything is paid for."""
    swapped = 0
    if smart:
        body, swapped = smart_encode(body)
    if cap is not None:
        size = measure(body)
        if size.segments > cap:
            raise PolicyRefused(
                f"The body is {size.segments} SMS segments ({size.encoding}); "
                f"this tenant allows {cap}.",
                code="too_many_segments",
                fields={"body": [f"{size.segments} segments, more than {cap}."]},
            )
    return body, swapped
