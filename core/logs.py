"""Logging: one format for every process, phone numbers masked in every line."""

from __future__ import annotations

import json
import logging
import re
import sys

from core.config import Settings


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


# A WhatsApp business-scoped user id (`US.13491208655302741918`, a parent `US.ENT.…`):
# Meta's name for a person, as personal as the number. Four digits at least, so module
# paths and words with a period are left alone.
_BSUID_RE = re.compile(
    r"(?<![\w.])([A-Z]{2}\.(?:ENT\.)?)((?=[A-Za-z0-9]*\d{4})[A-Za-z0-9]{6,128})\b"
)


def _mask_bsuid(match: re.Match[str]) -> str:
    head, rest = match.group(1), match.group(2)
    return f"{head}{'*' * (len(rest) - 4)}{rest[-4:]}"


def mask_text(text: str) -> str:
    """Mask every phone-number-like run and every WhatsApp user id in free text (log
    lines, error messages)."""
    text = _BSUID_RE.sub(_mask_bsuid, text)
    return _PHONE_RE.sub(lambda m: mask(re.sub(r"[\s-]", "", m.group(0))), text)


class MaskingFilter(logging.Filter):
    """Masks phone numbers in the final message, whoever logged it (our code or a library)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # Tracebacks carry SQL parameters (numbers, bodies): mask them too.
            record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(data)


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    if any(getattr(h, "_herald", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._herald = True  # type: ignore[attr-defined]
    handler.addFilter(MaskingFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # httpx logs every request URL at INFO; keep the noise (and any ids in URLs) out.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("twilio").setLevel(logging.WARNING)
