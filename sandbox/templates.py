"""WhatsApp templates in the sandbox: Meta's `GET /{waba_id}/message_templates`, Twilio's
Content API (`/v1/Content`, `/v1/ContentAndApprovals`, `/v1/Content/{sid}/ApprovalRequests`),
a control API to create them and change their status (a Meta change posts the signed
`message_template_status_update` webhook, as Meta does), and the checks a send of a
template meets at the provider.

The checks apply only to a WABA (Meta) or Twilio account that has templates registered
here: a test sending a template the sandbox was never told about is answered as before.
Templates are provider-side resources, like accounts: `POST /_sandbox/reset` keeps them
(`DELETE /_sandbox/templates` clears them).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request

from sandbox.callbacks import meta_callback
from sandbox.common import json_response
from sandbox.graph import ERRORS, graph_error, graph_json, graph_token, token_accounts
from sandbox.state import ConfigError, SandboxState, new_graph_id
from sandbox.twilio_rest import BASIC_CHALLENGE, basic_account, error_response

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


# ---------------------------------------------------------------- shapes


def _meta_view(template: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    view = {k: template[k] for k in wanted if k in template and k != "id"}
    view["id"] = template["id"]
    return view


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _content_view(content: dict[str, Any], base: str, approvals: bool) -> dict[str, Any]:
    url = f"{base}/v1/Content/{content['sid']}"
    view = {
        "date_updated": _iso(content["date_updated"]),
        "account_sid": content["account_sid"],
        "url": url,
        "types": content["types"],
        "sid": content["sid"],
        "language": content["language"],
        "date_created": _iso(content["date_created"]),
        "friendly_name": content["friendly_name"],
        "variables": content["variables"],
        "links": {
            "approval_fetch": f"{url}/ApprovalRequests",
            "approval_create": f"{url}/ApprovalRequests/whatsapp",
        },
    }
    if approvals:
        view.pop("url")
        view.pop("links")
        view["approval_requests"] = _approval(content)
    return view


def _approval(content: dict[str, Any]) -> dict[str, Any]:
    approval = content["approval"]
    return {
        "name": content["friendly_name"],
        "category": approval.get("category") or "UTILITY",
        "content_type": next(iter(content["types"] or {"twilio/text": {}})),
        "status": approval["status"],
        "rejection_reason": approval.get("rejection_reason") or "",
        "allow_category_change": True,
        "type": "whatsapp",
    }


def _graph_error(code: int, message: str, status: int, subcode: int | None = None) -> Response:
    """Meta's error JSON; unlike the messages endpoint, this one sends no `WWW-Authenticate`."""
    return graph_json(*graph_error(code, message, status, subcode))


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i:{index}".encode()).decode().rstrip("=")


def _index(cursor: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(raw[2:]) if raw.startswith("i:") else None
    except (ValueError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- routes


def blueprint(state: SandboxState) -> Blueprint:
    """Meta's template listing, Twilio's Content API and `/_sandbox/templates`."""
    bp = Blueprint("templates", __name__)
    templates = store(state)

    @bp.errorhandler(ConfigError)
    def bad_request(exc: ConfigError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), 400

    # -- Meta: GET /<version>/<waba_id>/message_templates

    @bp.get("/<version>/<waba_id>/message_templates")
    def meta_list(version: str, waba_id: str) -> Response:
        accounts = token_accounts(state, graph_token())
        if not accounts:
            return _graph_error(190, ERRORS[190][1], 401)
        if not any(a.waba_id == waba_id for a in accounts.values()):
            return _graph_error(
                100,
                f"Unsupported get request. Object with ID '{waba_id}' does not exist, cannot "
                "be loaded due to missing permissions, or does not support this operation.",
                400,
                subcode=33,
            )
        args = request.args
        try:
            limit = max(1, min(int(args.get("limit", 25)), 1000))
        except ValueError:
            return _graph_error(100, "(#100) Param limit must be an integer", 400)
        wanted = [f for f in (args.get("fields") or "name,status,id").split(",") if f]
        with templates.lock:
            rows = [
                t
                for t in templates.meta.get(waba_id, [])
                if (not args.get("name") or args["name"] in t["name"])
                and (not args.get("status") or t["status"] == args["status"].upper())
                and (not args.get("language") or t["language"] == args["language"])
            ]
            rows = copy.deepcopy(rows)
        start = 0
        if args.get("after"):
            index = _index(args["after"])
            if index is None:
                return _graph_error(100, "(#100) Invalid cursor", 400)
            start = index + 1
        chunk = rows[start : start + limit]
        body: dict[str, Any] = {"data": [_meta_view(t, wanted) for t in chunk]}
        if chunk:
            body["paging"] = {
                "cursors": {"before": _cursor(start), "after": _cursor(start + len(chunk) - 1)}
            }
            if start + limit < len(rows):
                query = {k: v for k, v in args.items() if k not in ("after", "before")}
                query["after"] = body["paging"]["cursors"]["after"]
                body["paging"]["next"] = f"{request.base_url}?{urlencode(query)}"
        return json_response(body, 200, None, "application/json; charset=UTF-8")

    # -- Twilio Content API

    def twilio_account() -> str | None:
        account = basic_account(state)
        return None if account is None else account.account_sid

    def unauthorized() -> Response:
        """20003 as the Content API answers it: the challenge, but no `detail`."""
        return error_response(20003, headers=BASIC_CHALLENGE)

    def content_page(key_approvals: bool) -> Response:
        sid = twilio_account()
        if sid is None:
            return unauthorized()
        try:
            size = max(1, min(int(request.args.get("PageSize", 50)), 1000))
            page = max(0, int(request.args.get("Page", 0)))
        except ValueError:
            return error_response(20001, "Invalid paging parameters", 400)
        with templates.lock:
            rows = copy.deepcopy(templates.twilio.get(sid, []))
        start = page * size
        if request.args.get("PageToken"):
            index = _index(request.args["PageToken"])
            if index is None:
                return error_response(20001, "Invalid PageToken", 400)
            start = index
        chunk = rows[start : start + size]
        base = request.host_url.rstrip("/")
        path = f"{base}{request.path}"

        def url(n: int, token: int | None = None) -> str:
            tail = f"&PageToken={_cursor(token)}" if token is not None else ""
            return f"{path}?PageSize={size}&Page={n}{tail}"

        return json_response(
            {
                "contents": [_content_view(c, base, key_approvals) for c in chunk],
                "meta": {
                    "page": page,
                    "page_size": size,
                    "first_page_url": url(0),
                    "previous_page_url": url(page - 1) if page > 0 else None,
                    "url": url(page),
                    "next_page_url": url(page + 1, start + size)
                    if start + size < len(rows)
                    else None,
                    "key": "contents",
                },
            },
            200,
        )

    @bp.get("/v1/Content")
    def content_list() -> Response:
        return content_page(False)

    @bp.get("/v1/ContentAndApprovals")
    def content_and_approvals() -> Response:
        return content_page(True)

    def find_content(sid: str) -> tuple[str, dict[str, Any]] | Response:
        """The caller's account and its Content `sid`; or Twilio's 401 or 404."""
        account = twilio_account()
        if account is None:
            return unauthorized()
        with templates.lock:
            found = next((c for c in templates.twilio.get(account, []) if c["sid"] == sid), None)
            found = copy.deepcopy(found)
        if found is None:
            return error_response(20404, path=request.path)
        return account, found

    @bp.get("/v1/Content/<sid>")
    def content_fetch(sid: str) -> Response:
        content = find_content(sid)
        if isinstance(content, Response):
            return content
        _, found = content
        return json_response(_content_view(found, request.host_url.rstrip("/"), False), 200)

    @bp.get("/v1/Content/<sid>/ApprovalRequests")
    def content_approval(sid: str) -> Response:
        content = find_content(sid)
        if isinstance(content, Response):
            return content
        account, found = content
        return json_response(
            {
                "account_sid": account,
                "sid": sid,
                "url": f"{request.host_url.rstrip('/')}/v1/Content/{sid}/ApprovalRequests",
                "whatsapp": _approval(found),
            },
            200,
        )

    # -- control: /_sandbox/templates

    @bp.get("/_sandbox/templates")
    def control_list() -> Response:
        with templates.lock:
            return jsonify(
                meta=copy.deepcopy(templates.meta), twilio=copy.deepcopy(templates.twilio)
            )

    @bp.delete("/_sandbox/templates")
    def control_clear() -> Response:
        templates.clear()
        return jsonify(ok=True)

    @bp.post("/_sandbox/templates")
    def control_create() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object body")
        if data.get("provider") == "meta":
            return jsonify(create_meta(state, templates, data)), 201
        if data.get("provider") == "twilio":
            return jsonify(create_twilio(state, templates, data)), 201
        raise ConfigError("provider must be 'twilio' or 'meta'")

    @bp.post("/_sandbox/templates/<template_id>/status")
    def control_status(template_id: str) -> Response:
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ConfigError('expected {"status": ..., "reason"?: ...}')
        return jsonify(set_status(state, templates, template_id, data))

    @bp.delete("/_sandbox/templates/<template_id>")
    def control_delete(template_id: str) -> Response:
        with templates.lock:
            for bucket in (*templates.meta.values(), *templates.twilio.values()):
                for item in list(bucket):
                    if item.get("id") == template_id or item.get("sid") == template_id:
                        bucket.remove(item)
                        return jsonify(ok=True)
        raise ConfigError(f"no template {template_id!r}")

    return bp


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
