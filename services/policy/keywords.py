"""Opt-out, opt-in and help keywords as carriers define them, a tenant's own words in
other languages, and the replies Herald sends where the provider sends none.

A keyword is the whole inbound text, case-insensitive, spaces collapsed (as Twilio
matches them): "stop" stops, "please stop texting me" does not. The standard words are
the CTIA's (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT; START, UNSTOP,
YES; HELP, INFO); a tenant adds its own (`keywords`, e.g. ARRET, PARAR, BAJA).

Replies: Twilio answers its standard SMS keywords itself (and then blocks the number,
error 21610), so Herald stays silent there; it answers on WhatsApp, which answers
nothing, and for a tenant's own words, which no provider knows. A reply confirming an
opt-out is the one message an opted-out person may still get."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate

STOP = "stop"
START = "start"
HELP = "help"

STANDARD: dict[str, frozenset[str]] = {
    STOP: frozenset(
        {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
    ),
    START: frozenset({"START", "UNSTOP", "YES"}),
    HELP: frozenset({"HELP", "INFO"}),
}

# Twilio's own default answers, which Herald gives where the provider gives none.
DEFAULT_REPLIES = {
    STOP: "You have been unsubscribed and will receive no more messages from us. "
    "Reply START to resubscribe.",
    START: "You have been resubscribed. Reply HELP for help, STOP to unsubscribe.",
    HELP: "Reply STOP to unsubscribe. Msg & data rates may apply.",
}


def _words(value: str) -> str:
    return " ".join(value.strip().upper().split())


def keyword_of(body: str | None, extra: dict[str, Any] | None = None) -> tuple[str, bool] | None:
    """(stop|start|help, whether it is one of the tenant's own words) for an inbound
    text that is a keyword, else None. A tenant's word never overrides a standard one."""
    text = _words(body or "")
    if not text:
        return None
    for kind, words in STANDARD.items():
        if text in words:
            return kind, False
    for kind in (STOP, START, HELP):
        if text in {_words(w) for w in (extra or {}).get(kind) or ()}:
            return kind, True
    return None


def reply_for(
    kind: str, own_word: bool, channel: str, provider: str, replies: dict[str, Any] | None
) -> str | None:
    """The text Herald answers a keyword with, or None: none where the provider answers
    (Twilio, SMS, a standard word) or where the tenant set the reply to ''."""
    if channel == "sms" and provider == "twilio" and not own_word:
        return None
    text = (replies or {}).get(kind, DEFAULT_REPLIES[kind])
    return text or None


class KeywordsSchema(Schema):
    """A tenant's own keywords, per kind (`keywords`)."""

    class Meta:
        unknown = RAISE

    stop = fields.List(fields.String(validate=validate.Length(min=1, max=40)))
    start = fields.List(fields.String(validate=validate.Length(min=1, max=40)))
    help = fields.List(fields.String(validate=validate.Length(min=1, max=40)))


class KeywordRepliesSchema(Schema):
    """A tenant's answers to keywords (`keyword_replies`): '' sends none; absent: the
    default."""

    class Meta:
        unknown = RAISE

    stop = fields.String(validate=validate.Length(max=1000))
    start = fields.String(validate=validate.Length(max=1000))
    help = fields.String(validate=validate.Length(max=1000))
