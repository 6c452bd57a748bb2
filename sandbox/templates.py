"""WhatsApp templates in the sandbox: what they are (Meta's by WABA, Twilio's Content by
account), how the control API creates them and changes their status (a Meta change posts
the signed `message_template_status_update` webhook, as Meta does), and the checks a send
of a template meets at the provider. Their HTTP routes are in sandbox/template_api.py.

The checks apply only to a WABA (Meta) or Twilio account that has templates registered
here: a test sending a template the sandbox was never told about is answered as before.
Templates are provider-side resources, like accounts: `POST /_sandbox/reset` keeps them
(`DELETE /_sandbox/templates` clears them).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from typing import Any

from sandbox.callbacks import meta_callback
from sandbox.state import ConfigError, SandboxState, new_graph_id

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
META_STATUSES = (
    "APPROVED",
    "PENDING",
    "REJECTED",
    "PAUSED",
    "DISABLED",
    "IN_APPEAL",
    "PENDING_DELETION",
    "DELETED",
    "ARCHIVED",
    "LIMIT_EXCEEDED",
)
TWILIO_STATUSES = (
    "unsubmitted",
    "received",
    "pending",
    "approved",
    "rejected",
    "paused",
    "disabled",
)
MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT", "LOCATION")
# Meta's template errors on a send (the Cloud API error-code table): HTTP status, title.
META_ERRORS = {
    132000: (400, "Number of parameters does not match the expected number of params"),
    132001: (404, "Template name does not exist in the translation"),
    132015: (400, "Template is Paused"),
    132016: (400, "Template is disabled"),
}


class TemplateStore:
    """Templates by WABA (Meta) and Content by Twilio account."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.meta: dict[str, list[dict[str, Any]]] = {}
        self.twilio: dict[str, list[dict[str, Any]]] = {}

    def clear(self) -> None:
        with self.lock:
            self.meta.clear()
            self.twilio.clear()


def store(state: SandboxState) -> TemplateStore:
    """The state's templates (kept across resets, like accounts)."""
    return state.part("templates", TemplateStore)


def _placeholders(text: Any) -> list[str]:
    return list(dict.fromkeys(PLACEHOLDER.findall(text))) if isinstance(text, str) else []


def _meta_expected(template: dict[str, Any]) -> dict[str, Any]:
    header, body, buttons = 0, 0, {}
    for component in template.get("components") or []:
        kind = str(component.get("type") or "").upper()
        if kind == "HEADER":
            shape = str(component.get("format") or "TEXT").upper()
            header = 1 if shape in MEDIA_HEADERS else len(_placeholders(component.get("text")))
        elif kind == "BODY":
            body = len(_placeholders(component.get("text")))
        elif kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons") or []):
                btype = str(button.get("type") or "").upper()
                if (btype == "URL" and _placeholders(button.get("url"))) or btype in (
                    "COPY_CODE",
                    "OTP",
                ):
                    buttons[index] = 1
    return {"header": header, "body": body, "buttons": buttons}


def _meta_given(sent: dict[str, Any]) -> dict[str, Any]:
    header, body, buttons = 0, 0, {}
    for component in sent.get("components") or []:
        if not isinstance(component, dict):
            continue
        params = component.get("parameters")
        count = len(params) if isinstance(params, list) else 0
        kind = str(component.get("type") or "").lower()
        if kind == "header":
            header += count
        elif kind == "body":
            body += count
        elif kind == "button":
            try:
                index = int(component.get("index", 0))
            except (TypeError, ValueError):
                continue
            buttons[index] = buttons.get(index, 0) + count
    return {"header": header, "body": body, "buttons": buttons}


def meta_send_problem(
    state: SandboxState, waba_id: str, payload: dict[str, Any]
) -> tuple[int, int, str, str] | None:
    """(code, HTTP status, message, details) Meta answers a template send with, or None.
    Only for a WABA with templates registered here."""
    if payload.get("type") != "template":
        return None
    sent = payload.get("template") or {}
    name, language = sent.get("name"), (sent.get("language") or {}).get("code")
    with store(state).lock:
        known = copy.deepcopy(store(state).meta.get(waba_id) or [])
    if not known:
        return None
    found = next((t for t in known if t["name"] == name and t["language"] == language), None)
    if found is None or found["status"] not in ("APPROVED", "PAUSED", "DISABLED"):
        return (
            132001,
            META_ERRORS[132001][0],
            f"(#132001) {META_ERRORS[132001][1]}",
            f"template name ({name}) does not exist in {language}",
        )
    if found["status"] == "PAUSED":
        return (
            132015,
            400,
            f"(#132015) {META_ERRORS[132015][1]}",
            "Template is paused due to low quality so it cannot be sent in a template message.",
        )
    if found["status"] == "DISABLED":
        return (
            132016,
            400,
            f"(#132016) {META_ERRORS[132016][1]}",
            "Template has been paused too many times due to low quality and is now "
            "permanently disabled.",
        )
    expected, given = _meta_expected(found), _meta_given(sent)
    for part in ("header", "body"):
        if expected[part] != given[part]:
            return (
                132000,
                400,
                f"(#132000) {META_ERRORS[132000][1]}",
                f"{part}: number of localizable_params ({given[part]}) does not match the "
                f"expected number of params ({expected[part]})",
            )
    for index, count in sorted(expected["buttons"].items()):
        if given["buttons"].get(index, 0) != count:
            return (
                132000,
                400,
                f"(#132000) {META_ERRORS[132000][1]}",
                f"buttons: number of parameters ({given['buttons'].get(index, 0)}) of button "
                f"{index} does not match the expected number of params ({count})",
            )
    return None


def twilio_send_problem(
    state: SandboxState, account_sid: str, content_sid: str, variables: str | None, whatsapp: bool
) -> tuple[int | None, int | None]:
    """(code answered now, code of the later `failed` status) for a send by ContentSid:
    21655 for Content the account does not have; on WhatsApp, 63027 for Content not
    approved there and 63028 for variables that do not match. Only for an account with
    Content registered here."""
    with store(state).lock:
        known = copy.deepcopy(store(state).twilio.get(account_sid) or [])
    if not known or not content_sid:
        return None, None
    found = next((c for c in known if c["sid"] == content_sid), None)
    if found is None:
        return 21655, None
    if not whatsapp:
        return None, None
    if found["approval"]["status"] in ("rejected", "paused", "disabled"):
        return None, 63027
    try:
        given = json.loads(variables) if variables else {}
    except ValueError:
        given = {}
    wanted = set(_twilio_names(found))
    if isinstance(given, dict) and set(map(str, given)) != wanted:
        return None, 63028
    return None, None


def _twilio_names(content: dict[str, Any]) -> list[str]:
    names = [str(k) for k in (content.get("variables") or {})]
    names += _placeholders(json.dumps(content.get("types") or {}))
    return list(dict.fromkeys(names))


def create_meta(state: SandboxState, templates: TemplateStore, data: dict[str, Any]) -> dict:
    """Register a Meta template (`POST /_sandbox/templates`); the answer carries its id."""
    name, language = data.get("name"), data.get("language", "en_US")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,512}", name):
        raise ConfigError("name must be lower-case letters, digits and underscores")
    status = str(data.get("status") or "PENDING").upper()
    if status not in META_STATUSES:
        raise ConfigError(f"status must be one of {META_STATUSES}")
    components = data.get("components") or [{"type": "BODY", "text": data.get("body") or name}]
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise ConfigError("components must be a list of objects")
    with state.lock:
        waba = str(data.get("waba_id") or next(iter(state.meta_accounts.values())).waba_id)
    template = {
        "name": name,
        "parameter_format": str(data.get("parameter_format") or "POSITIONAL").upper(),
        "components": components,
        "language": str(language),
        "status": status,
        "category": str(data.get("category") or "UTILITY").upper(),
        "id": new_graph_id(),
    }
    if status == "REJECTED":
        template["rejected_reason"] = str(data.get("reason") or "INVALID_FORMAT")
    with templates.lock:
        bucket = templates.meta.setdefault(waba, [])
        if any(t["name"] == name and t["language"] == template["language"] for t in bucket):
            raise ConfigError(f"template {name!r} ({language}) already exists on WABA {waba}")
        bucket.append(template)
    return {"provider": "meta", "waba_id": waba, **copy.deepcopy(template)}


def create_twilio(state: SandboxState, templates: TemplateStore, data: dict[str, Any]) -> dict:
    """Register Twilio Content (`POST /_sandbox/templates`); the answer carries its HX sid."""
    with state.lock:
        account = str(data.get("account_sid") or next(iter(state.twilio_accounts)))
        if account not in state.twilio_accounts:
            raise ConfigError(f"unknown twilio account {account!r}")
    status = str(data.get("status") or "unsubmitted").lower()
    if status not in TWILIO_STATUSES:
        raise ConfigError(f"status must be one of {TWILIO_STATUSES}")
    types = data.get("types") or {"twilio/text": {"body": data.get("body") or "Hello"}}
    variables = data.get("variables") or {}
    if not isinstance(types, dict) or not isinstance(variables, dict):
        raise ConfigError("types and variables must be objects")
    now = time.time()
    content = {
        "sid": "HX" + uuid.uuid4().hex,
        "account_sid": account,
        "friendly_name": str(data.get("friendly_name") or data.get("name") or "content"),
        "language": str(data.get("language") or "en"),
        "variables": {str(k): str(v) for k, v in variables.items()},
        "types": types,
        "date_created": now,
        "date_updated": now,
        "approval": {
            "status": status,
            "category": str(data.get("category") or "UTILITY").upper(),
            "rejection_reason": str(data.get("reason") or ""),
        },
    }
    with templates.lock:
        templates.twilio.setdefault(account, []).append(content)
    return {"provider": "twilio", **copy.deepcopy(content)}


def set_status(
    state: SandboxState, templates: TemplateStore, template_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Change a template's status; a Meta one posts at once the webhook Meta would send."""
    with templates.lock:
        for account, bucket in templates.twilio.items():
            for content in bucket:
                if content["sid"] == template_id:
                    status = data["status"].lower()
                    if status not in TWILIO_STATUSES:
                        raise ConfigError(f"status must be one of {TWILIO_STATUSES}")
                    content["approval"]["status"] = status
                    content["approval"]["rejection_reason"] = str(data.get("reason") or "")
                    content["date_updated"] = time.time()
                    # Twilio sends no template status webhook: Herald learns it by syncing.
                    return {"provider": "twilio", "account_sid": account, **copy.deepcopy(content)}
        found = None
        for waba, bucket in templates.meta.items():
            for template in bucket:
                if template["id"] == template_id:
                    found = (waba, template)
        if found is None:
            raise ConfigError(f"no template {template_id!r}")
        waba, template = found
        event = data["status"].upper()
        status = {"REINSTATED": "APPROVED", "UNARCHIVED": "APPROVED"}.get(event, event)
        if status not in META_STATUSES and event not in ("FLAGGED", "LOCKED", "UNLOCKED"):
            raise ConfigError(f"status must be one of {META_STATUSES}")
        if event not in ("FLAGGED", "LOCKED", "UNLOCKED"):
            template["status"] = status
        reason = str(data.get("reason") or ("NONE" if event != "REJECTED" else "INVALID_FORMAT"))
        if event == "REJECTED":
            template["rejected_reason"] = reason
        snapshot = copy.deepcopy(template)
    answer: dict[str, Any] = {"provider": "meta", "waba_id": waba, **snapshot}
    url = state.get_config()["meta_webhook_url"]
    with state.lock:
        account = next((a for a in state.meta_accounts.values() if a.waba_id == waba), None)
    if url and account is not None:
        callback = meta_callback(
            url,
            status_update_payload(waba, snapshot, event, reason, data.get("other_info")),
            account.app_secret,
            kind="template",
            event=event,
            message_id=None,
            max_retries=0,
        )
        attempt = state.scheduler.send_now(callback)
        answer["webhook"] = {
            "payload": callback.payload,
            "status_code": attempt["status_code"],
            "ok": attempt["ok"],
        }
    return answer


def status_update_payload(
    waba: str, template: dict[str, Any], event: str, reason: str, other: Any = None
) -> dict[str, Any]:
    """Meta's `message_template_status_update` webhook body for one event."""
    value: dict[str, Any] = {
        "event": event,
        "message_template_id": int(template["id"]),
        "message_template_name": template["name"],
        "message_template_language": template["language"],
        "reason": reason,
        "message_template_category": template["category"],
    }
    if event == "DISABLED":
        value["disable_info"] = {"disable_date": str(int(time.time()))}
    if isinstance(other, dict):
        value["other_info"] = other
    elif event == "PAUSED":
        value["other_info"] = {
            "title": "FIRST_PAUSE",
            "description": "Your WhatsApp message template has been paused for 3 hours "
            "due to low quality.",
        }
    return {
        "entry": [
            {
                "id": waba,
                "time": int(time.time()),
                "changes": [{"value": value, "field": "message_template_status_update"}],
            }
        ],
        "object": "whatsapp_business_account",
    }
