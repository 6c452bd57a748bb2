"""`/_sandbox/*`: the JSON control API a test harness uses to steer and inspect the sandbox."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from sandbox import conversations, meta_api, twilio_api, users
from sandbox.state import PROVIDERS, ConfigError, SandboxState, digits


def _bool_arg(name: str) -> bool | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"{name} must be true or false")


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object body")
    return data


def blueprint(state: SandboxState) -> Blueprint:
    """Control routes, bound to `state`."""
    bp = Blueprint("control", __name__, url_prefix="/_sandbox")

    @bp.errorhandler(ConfigError)
    def bad_request(exc: ConfigError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), 400

    @bp.get("/health")
    def health() -> Response:
        return jsonify(ok=True)

    @bp.get("/sends")
    def sends() -> Response:
        provider = request.args.get("provider") or None
        if provider is not None and provider not in PROVIDERS:
            raise ConfigError("provider must be 'twilio' or 'meta'")
        rows = state.query_sends(
            provider,
            request.args.get("herald_id") or None,
            request.args.get("to") or None,
            _bool_arg("accepted"),
        )
        return jsonify(sends=rows)

    @bp.get("/sends/summary")
    def summary() -> Response:
        return jsonify(state.summary())

    @bp.get("/faults")
    def list_faults() -> Response:
        return jsonify(faults=state.list_faults())

    @bp.post("/faults")
    def add_fault() -> tuple[Response, int]:
        fault = state.add_fault(_body())
        return jsonify(fault.to_dict()), 201

    @bp.delete("/faults")
    def clear_faults() -> Response:
        state.clear_faults()
        return jsonify(ok=True)

    @bp.get("/config")
    def get_config() -> Response:
        return jsonify(state.get_config())

    @bp.post("/config")
    def set_config() -> Response:
        return jsonify(state.update_config(_body()))

    @bp.get("/accounts")
    def accounts() -> Response:
        return jsonify(state.accounts())

    @bp.post("/accounts")
    def add_account() -> tuple[Response, int]:
        return jsonify(state.add_account(_body())), 201

    @bp.get("/callbacks")
    def callbacks() -> Response:
        rows = state.query_callbacks(
            request.args.get("provider") or None, request.args.get("message_id") or None
        )
        return jsonify(callbacks=rows, pending=state.scheduler.pending())

    @bp.post("/inbound")
    def inbound() -> tuple[Response, int]:
        data = _body()
        provider = data.get("provider")
        config = state.get_config()
        if provider == "twilio":
            build, url = twilio_api.inbound_callback, config["twilio_inbound_url"]
        elif provider == "meta":
            build, url = meta_api.inbound_callback, config["meta_webhook_url"]
        else:
            raise ConfigError("provider must be 'twilio' or 'meta'")
        url = data.get("url") or url
        if not url:
            raise ConfigError(f"no inbound URL configured for {provider} (set it in /config)")
        try:
            callback = build(state, data, url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        attempt = state.scheduler.send_now(callback)
        return jsonify(
            provider=provider,
            url=url,
            message_id=callback.message_id,
            payload=callback.payload,
            status_code=attempt["status_code"],
            ok=attempt["ok"],
            error=attempt["error"],
        ), 200

    @bp.post("/users")
    def add_user() -> tuple[Response, int]:
        """A WhatsApp user as Meta names it: a BSUID always; a `username`; `hide_phone`
        (or no `phone`): webhooks carry the BSUID alone (sandbox/users.py)."""
        data = _body()
        with state.lock:
            phone_id = str(data.get("account") or next(iter(state.meta_accounts)))
            account = state.meta_accounts.get(phone_id)
        if account is None:
            raise ConfigError(f"unknown meta phone_number_id {phone_id!r}")
        wa_id = None
        if data.get("phone") is not None:
            wa_id = meta_api.wa_id_for(digits(str(data["phone"])))
            if not wa_id.isdigit() or not 8 <= len(wa_id) <= 15:
                raise ConfigError("'phone' must be a phone number")
        try:
            user = users.register(state, account.waba_id, data, wa_id)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return jsonify(user.to_dict()), 201

    @bp.post("/users/change")
    def change_user() -> tuple[Response, int]:
        """Send the `system` webhook of an identity change (`user_changed_number`,
        `user_changed_user_id`) after making it."""
        data = _body()
        url = data.get("url") or state.get_config()["meta_webhook_url"]
        if not url:
            raise ConfigError("no meta webhook URL configured (set it in /config)")
        try:
            callback = meta_api.identity_change_callback(state, data, url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        attempt = state.scheduler.send_now(callback)
        return jsonify(
            payload=callback.payload,
            status_code=attempt["status_code"],
            ok=attempt["ok"],
            error=attempt["error"],
        ), 200

    @bp.post("/online")
    def online() -> Response:
        """The offline Meta phone (`+12015550160`) connects: its held messages are
        delivered now."""
        number = str(_body().get("to") or "")
        return jsonify(delivered=meta_api.come_online(state, number))

    @bp.get("/reads")
    def reads() -> Response:
        """Read receipts (and typing indicators) asked of the Meta API, in order."""
        return jsonify(reads=conversations.reads(state, request.args.get("message_id") or None))

    @bp.post("/reset")
    def reset() -> Response:
        state.reset()
        conversations.clear_reads(state)
        users.directory(state).clear()
        return jsonify(ok=True)

    return bp
