"""The subset of Twilio's 2010-04-01 Messages API that Herald uses, with Twilio's error shapes."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from flask import Blueprint, Response, request

from sandbox import templates
from sandbox.callbacks import plan_statuses, twilio_callback
from sandbox.common import Send, json_response
from sandbox.media import inbound_twilio_media
from sandbox.state import E164, Fault, SandboxState, TwilioAccount, digits, new_twilio_sid
from sandbox.twilio_rest import (
    API_VERSION,
    BASE,
    basic_account,
    error_body,
    error_response,
    unauthorized,
)

# Asynchronous failures that only show up in status callbacks / fetched resources.
# WhatsApp's closed 24-hour window is one: the create is accepted, the callback fails.
ASYNC_ERRORS = {
    30003: "Unreachable destination handset",
    30008: "Unknown error",
    30036: "The specified validity period on this message has elapsed.",
    63003: "Channel could not find To address",
    63016: "Failed to send freeform message because you are outside the allowed window. "
    "If you are using WhatsApp, please use a Message Template.",
    63027: "Template does not exist for a language and locale",
    63028: "Number of parameters provided does not match the expected number of parameters",
}

# Magic numbers (digits without '+') that agree with Twilio's test credentials:
# recipients, and senders (From).
MAGIC_SYNC = {
    "15005550001": 21211,
    "15005550002": 21612,
    "15005550003": 21408,
    "15005550004": 21610,
    "15005550009": 21614,
}
MAGIC_FROM = {"15005550001": 21212, "15005550007": 21606, "15005550008": 21611}
# Asynchronous outcomes Twilio's test numbers do not cover: a range of the sandbox's own.
MAGIC_UNDELIVERED = "12015550106"  # sent, then undelivered 30003
MAGIC_FAILED = "12015550107"  # failed 30008
MAGIC_WINDOW_CLOSED = "12015550116"  # WhatsApp free-form: failed 63016 (templates pass)
MAGIC_NOT_ON_WHATSAPP = "12015550163"  # WhatsApp: failed 63003 (an SMS to it is delivered)
# A sender queue this slow for this recipient: a ValidityPeriod shorter than the wait
# fails the message with 30036 (its callbacks still come after the usual delay).
MAGIC_SLOW = "12015550136"
SLOW_QUEUE_SECONDS = 600

PRICES = {"sms": "-0.00790", "mms": "-0.02000", "whatsapp": "-0.00500"}
MG_FROM = {"sms": "+15017122661", "whatsapp": "whatsapp:+14155238886"}


def _price(msg: dict) -> str:
    """Twilio bills an SMS per segment."""
    unit = PRICES[msg["channel"]]
    if msg["channel"] != "sms" or int(msg.get("num_segments") or 1) <= 1:
        return unit
    return f"{float(unit) * int(msg['num_segments']):.5f}"


def _rfc2822(ts: float | None) -> str | None:
    return None if ts is None else format_datetime(datetime.fromtimestamp(ts, UTC))


# GSM 03.38: the default alphabet (one septet each) and its extension table (two).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = frozenset("^{}\\[]~|€\f")


def _segments(body: str) -> int:
    """SMS segments as a carrier bills them: GSM-7 160 septets, 153 per part (an
    extension character takes two); one other character makes the whole body UCS-2,
    70 UTF-16 units, 67 per part (an emoji takes two)."""
    if not body:
        return 1
    if all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in body):
        units = sum(2 if c in _GSM_EXTENDED else 1 for c in body)
        single, multi = 160, 153
    else:
        units = _twilio_length(body)
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def _twilio_length(body: str) -> int:
    """Body length as Twilio counts it against 1,600: an emoji (two UTF-16 units) counts 2."""
    return len(body.encode("utf-16-le", "surrogatepass")) // 2


def _valid_from(value: str) -> bool:
    bare = value.removeprefix("whatsapp:")
    if value.startswith("whatsapp:"):
        return bool(E164.fullmatch(bare))
    return bool(
        E164.fullmatch(bare)
        or re.fullmatch(r"\d{5,6}", bare)
        or re.fullmatch(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}", bare)
    )


def herald_id_from(status_callback: str | None) -> str | None:
    """Herald puts its own message id in the StatusCallback query as `message_id`."""
    if not status_callback:
        return None
    values = parse_qs(urlparse(status_callback).query).get("message_id")
    return values[0] if values else None


def render(msg: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The Message resource as Twilio returns it, with the status reached at `now`."""
    now = time.time() if now is None else now
    reached = [(t, s) for t, s in msg["timeline"] if t <= now]
    updated, status = reached[-1]
    sent_at = next((t for t, s in reached if s in ("sent", "failed", "undelivered")), None)
    billed = status in ("delivered", "read", "undelivered")
    failed = status in ("failed", "undelivered")
    uri = f"{BASE}/{msg['account_sid']}/Messages/{msg['sid']}"
    return {
        "account_sid": msg["account_sid"],
        "api_version": API_VERSION,
        "body": msg["body"],
        "date_created": _rfc2822(msg["created"]),
        "date_sent": _rfc2822(sent_at),
        "date_updated": _rfc2822(updated),
        "direction": "outbound-api",
        "error_code": msg["error_code"] if failed else None,
        "error_message": ASYNC_ERRORS.get(msg["error_code"]) if failed else None,
        "from": msg["from"] or (None if status == "accepted" else _service_sender(msg)),
        "messaging_service_sid": msg["messaging_service_sid"],
        "num_media": str(msg["num_media"]),
        "num_segments": str(msg["num_segments"]),
        "price": _price(msg) if billed else None,
        "price_unit": "USD",
        "sid": msg["sid"],
        "status": status,
        "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
        "to": msg["to"],
        "uri": f"{uri}.json",
    }


def _service_sender(msg: dict[str, Any]) -> str:
    """The number a Messaging Service picks as sender once it has sent the message."""
    return MG_FROM["whatsapp" if msg["channel"] == "whatsapp" else "sms"]


def _form_dict(form: Any) -> dict[str, Any]:
    return {k: (v[0] if len(v) == 1 else v) for k, v in form.lists()}


def blueprint(state: SandboxState) -> Blueprint:
    """Flask routes for the Twilio REST API, bound to `state`."""
    bp = Blueprint("twilio", __name__)

    def authenticate(account_sid: str) -> TwilioAccount | None:
        """The account of the path, when the request's basic auth is its own."""
        account = basic_account(state)
        return account if account is not None and account.account_sid == account_sid else None

    @bp.post(f"{BASE}/<account_sid>/Messages.json")
    def create_message(account_sid: str) -> Response:
        received_at = time.time()
        form = request.form
        to, from_ = form.get("To", ""), form.get("From", "")
        mg = form.get("MessagingServiceSid", "")
        media = form.getlist("MediaUrl")
        body = form.get("Body", "")
        content_sid = form.get("ContentSid", "")
        callback_url = form.get("StatusCallback", "")
        whatsapp = to.startswith("whatsapp:")
        channel = "whatsapp" if whatsapp else ("mms" if media else "sms")
        kind = "content" if content_sid else ("media" if media else "text")
        receipt: dict[str, Any] = {
            "provider": "twilio",
            "received_at": received_at,
            "account": account_sid,
            "herald_id": herald_id_from(callback_url),
            "to": to,
            "from": from_ or mg or None,
            "channel": "whatsapp" if whatsapp else "sms",
            "type": kind,
            "body": body or None,
            "request": _form_dict(form),
        }

        send = Send(state, receipt, _fault_error)

        def reject(code: int) -> Response:
            return send.refuse(error_response(code, to=to, from_=from_, mg=mg), code)

        account = authenticate(account_sid)
        if account is None:
            return send.refuse(unauthorized(), 20003)

        gate = state.admit("twilio", from_ or mg or "-")
        state.sleep(gate.latency)
        if gate.retry_after is not None:
            retry = {"Retry-After": str(max(1, math.ceil(gate.retry_after)))}
            return send.refuse(error_response(20429, headers=retry), 20429)
        faulted = send.fault_first(gate.fault)
        if faulted is not None:
            return faulted

        # Validation, in roughly Twilio's order.
        code = None
        if not to:
            code = 21604
        elif not (from_ or mg):
            code = 21603
        elif not (body or media or content_sid):
            code = 21619
        elif not E164.fullmatch(to.removeprefix("whatsapp:")):
            code = 21211
        elif from_ and not _valid_from(from_):
            code = 21212
        elif mg and not re.fullmatch(r"MG[0-9a-f]{32}", mg):
            code = 21701
        elif content_sid and not re.fullmatch(r"HX[0-9a-f]{32}", content_sid):
            code = 21655
        elif content_sid and not _json_object(form.get("ContentVariables")):
            code = 21656
        elif len(media) > 10:
            code = 21623
        elif not _validity_period_ok(form.get("ValidityPeriod")):
            code = 21624
        elif content_sid and media:
            code = 63021
        elif _twilio_length(body) > 1600:
            code = 21617
        elif callback_url and not re.match(r"https?://[^/\s]+", callback_url):
            code = 21609
        elif from_ and whatsapp != from_.startswith("whatsapp:"):
            code = 21910
        elif from_ and digits(from_) in MAGIC_FROM:
            code = MAGIC_FROM[digits(from_)]
        elif from_ and not account.owns_from(from_):  # a number of another account
            code = 21606
        elif mg and not account.owns_service(mg):
            code = 21701
        elif digits(to) in MAGIC_SYNC:
            code = MAGIC_SYNC[digits(to)]
        content_error = None  # Content registered for the account: sandbox/templates.py
        if code is None and content_sid:
            code, content_error = templates.twilio_send_problem(
                state, account_sid, content_sid, form.get("ContentVariables"), whatsapp
            )
        if code is not None:
            return reject(code)

        sid = new_twilio_sid("MM" if media else "SM")
        created = time.time()
        delay = state.get_config()["callback_delay"]
        initial = "accepted" if mg else "queued"
        if digits(to) == MAGIC_FAILED:
            statuses, error_code = ["failed"], 30008
        elif digits(to) == MAGIC_UNDELIVERED:
            statuses, error_code = ["sent", "undelivered"], 30003
        elif whatsapp and digits(to) == MAGIC_WINDOW_CLOSED and not content_sid:
            statuses, error_code = ["failed"], 63016
        elif whatsapp and digits(to) == MAGIC_NOT_ON_WHATSAPP:
            statuses, error_code = ["failed"], 63003
        elif content_error is not None:
            statuses, error_code = ["failed"], content_error
        elif digits(to) == MAGIC_SLOW and _expires_in_queue(form.get("ValidityPeriod")):
            statuses, error_code = ["failed"], 30036
        else:
            statuses = ["sent", "delivered", "read"] if whatsapp else ["sent", "delivered"]
            error_code = None
        timeline = [(delay * (i + 1), s) for i, s in enumerate(statuses)]
        msg = {
            "sid": sid,
            "account_sid": account_sid,
            "to": to,
            "from": from_ or None,
            "messaging_service_sid": mg or None,
            "body": body,
            "num_media": len(media),
            "num_segments": 0 if mg else _segments(body),
            "created": created,
            "channel": channel,
            "error_code": error_code,
            "timeline": [(created, initial)] + [(created + d, s) for d, s in timeline],
        }
        with state.lock:
            state.twilio_messages[sid] = msg
        resource = render(msg, created)
        receipt["provider_message_id"] = sid
        if callback_url:
            _schedule_callbacks(state, account, msg, callback_url, timeline, whatsapp)
        return send.accept(json_response(resource, 201))

    @bp.get(f"{BASE}/<account_sid>/Messages/<sid>.json")
    def fetch_message(account_sid: str, sid: str) -> Response:
        if authenticate(account_sid) is None:
            return unauthorized()
        with state.lock:
            msg = state.twilio_messages.get(sid)
        if msg is None or msg["account_sid"] != account_sid:
            return error_response(20404, path=request.path)
        return json_response(render(msg), 200)

    @bp.get(f"{BASE}/<account_sid>/Messages.json")
    def list_messages(account_sid: str) -> Response:
        if authenticate(account_sid) is None:
            return unauthorized()
        args = request.args
        to, from_ = args.get("To"), args.get("From")
        try:
            page_size = max(1, min(1000, int(args.get("PageSize", 50))))
            page = max(0, int(args.get("Page", 0)))
        except ValueError:
            return error_response(20001, "Invalid paging parameters", 400)
        with state.lock:
            msgs = [
                m
                for m in state.twilio_messages.values()
                if m["account_sid"] == account_sid
                and (to is None or m["to"] == to)
                and (from_ is None or m["from"] == from_)
            ]
        msgs.reverse()  # newest first (the dict keeps creation order)
        start = page * page_size
        chunk = msgs[start : start + page_size]
        path = f"{BASE}/{account_sid}/Messages.json"

        def page_uri(n: int) -> str:
            query = {k: v for k, v in (("To", to), ("From", from_)) if v}
            return f"{path}?{urlencode({**query, 'PageSize': page_size, 'Page': n})}"

        return json_response(
            {
                "end": start + max(len(chunk) - 1, 0),
                "first_page_uri": page_uri(0),
                "messages": [render(m) for m in chunk],
                "next_page_uri": page_uri(page + 1) if start + page_size < len(msgs) else None,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": page_uri(page - 1) if page > 0 else None,
                "start": start,
                "uri": page_uri(page),
            },
            200,
        )

    return bp


def _validity_period_ok(raw: str | None) -> bool:
    """Twilio's ValidityPeriod: whole seconds from 1 to 36,000 (21624 otherwise)."""
    if raw is None:
        return True
    return raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 36_000


def _expires_in_queue(raw: str | None) -> bool:
    """Whether the slow recipient's queue wait outlives the message's ValidityPeriod
    (Twilio's own default is its 36,000 s maximum)."""
    return int(raw or 36_000) < SLOW_QUEUE_SECONDS


def _json_object(raw: str | None) -> bool:
    if raw is None:
        return True
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _fault_error(fault: Fault) -> tuple[Response, int]:
    code = fault.code or {429: 20429, 503: 20503}.get(fault.status or 500, 20500)
    # An injected error reads like the real one, naming this request's numbers.
    form = request.form
    err, status = error_body(
        code,
        fault.message,
        fault.status,
        to=form.get("To", ""),
        from_=form.get("From", ""),
        mg=form.get("MessagingServiceSid", ""),
        path=request.path,
    )
    if fault.problem:
        problem = {
            "type": err["more_info"],
            "title": err["message"],
            "status": status,
            "code": code,
            "detail": err["message"],
            "instance": request.path,
        }
        response = json_response(problem, status, None, "application/problem+json")
        return response, code
    return json_response(err, status), code


def _schedule_callbacks(
    state: SandboxState,
    account: TwilioAccount,
    msg: dict[str, Any],
    url: str,
    timeline: list[tuple[float, str]],
    whatsapp: bool,
) -> None:
    cfg = state.get_config()["callbacks"]
    sender = msg["from"] or _service_sender(msg)
    with state.lock:
        planned = plan_statuses(timeline, cfg, whatsapp, rng=state.rng)
    for delay, status in planned:
        params = {
            "SmsSid": msg["sid"],
            "SmsStatus": status,
            "MessageStatus": status,
            "To": msg["to"],
            "MessageSid": msg["sid"],
            "AccountSid": account.account_sid,
            "From": sender,
            "ApiVersion": API_VERSION,
        }
        if msg["messaging_service_sid"]:
            params["MessagingServiceSid"] = msg["messaging_service_sid"]
        if whatsapp:
            params["ChannelPrefix"] = "whatsapp"
        if status in ("failed", "undelivered"):
            params["ErrorCode"] = str(msg["error_code"])
            params["ErrorMessage"] = ASYNC_ERRORS[msg["error_code"]]
        callback = twilio_callback(
            url,
            params,
            account.auth_token,
            kind="status",
            event=status,
            message_id=msg["sid"],
            max_retries=cfg["twilio_retries"],
            backoff=cfg["retry_backoff"],
            retry_on="connection",
            extra={"herald_id": herald_id_from(url)},
        )
        state.scheduler.schedule(callback, delay)


def inbound_callback(state: SandboxState, data: dict[str, Any], url: str) -> Any:
    """Build a signed incoming-message webhook as Twilio posts it to a number's webhook URL."""
    to = str(data.get("to") or "")
    if not to:
        raise ValueError("'to' (the Twilio sender number that receives the message) is required")
    with state.lock:
        sid = str(data.get("account") or next(iter(state.twilio_accounts)))
        account = state.twilio_accounts.get(sid)
    if account is None:
        raise ValueError(f"unknown twilio account {sid!r}")
    whatsapp = to.startswith("whatsapp:")
    sender = str(data.get("from") or "")
    if not E164.fullmatch(sender.removeprefix("whatsapp:")):
        raise ValueError("'from' must be an E.164 number")
    if whatsapp and not sender.startswith("whatsapp:"):
        sender = "whatsapp:" + sender
    media_url = data.get("media_url")
    # No URL given but media described: hosted here, behind basic auth (sandbox/media.py).
    hosted = not media_url and any(
        data.get(k) is not None for k in ("media_type", "media_base64", "media_size")
    )
    msg_sid = new_twilio_sid("MM" if media_url or hosted else "SM")
    if hosted:
        media_url = inbound_twilio_media(state, account.account_sid, msg_sid, data)
    params = {
        "SmsMessageSid": msg_sid,
        "NumMedia": "1" if media_url else "0",
        "SmsSid": msg_sid,
        "SmsStatus": "received",
        "Body": str(data.get("body") or ""),
        "To": to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": msg_sid,
        "AccountSid": account.account_sid,
        "From": sender,
        "ApiVersion": API_VERSION,
    }
    if data.get("messaging_service_sid"):
        # A number in a Messaging Service: Twilio names the service on inbound too.
        params["MessagingServiceSid"] = str(data["messaging_service_sid"])
    kind = "text"
    if media_url:
        params["MediaUrl0"] = str(media_url)
        params["MediaContentType0"] = str(data.get("media_type") or "image/jpeg")
        kind = params["MediaContentType0"].split("/")[0]
    interactive = data.get("interactive") or {}
    if interactive.get("type") == "button_reply":
        reply = interactive.get("button_reply") or {}
        params.update(
            ButtonPayload=str(reply.get("id", "")), ButtonText=str(reply.get("title", ""))
        )
        kind = "button"
    elif interactive.get("type") == "list_reply":
        reply = interactive.get("list_reply") or {}
        params.update(ListId=str(reply.get("id", "")), ListTitle=str(reply.get("title", "")))
        kind = "interactive"
    if whatsapp:
        params.update(
            ProfileName=str(data.get("profile_name") or "Sandbox User"),
            WaId=digits(sender),
            MessageType=kind,
        )
    return twilio_callback(
        url,
        params,
        account.auth_token,
        kind="inbound",
        event=kind,
        message_id=msg_sid,
        max_retries=0,
    )
