"""In-process state of the provider sandbox: accounts, run-time config, faults, send receipts.

Everything here is plain Python guarded by one lock, so the Flask handlers (one thread per
request) and the callback scheduler can share it without a database.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from sandbox.callbacks import CallbackScheduler, MetaStatusBatcher

_Part = TypeVar("_Part")

PROVIDERS = ("twilio", "meta")
FAULT_MODES = ("error", "timeout", "accept_then_error", "accept_then_timeout")
CALLBACK_ORDERS = ("normal", "reverse", "shuffle")

DEFAULT_TWILIO_SID = "ACa1b2c3d4e5f60718293a4b5c6d7e8f90"
DEFAULT_TWILIO_TOKEN = "sandbox-twilio-token"
DEFAULT_META_PHONE_ID = "100000000000001"
DEFAULT_META_TOKEN = "sandbox-meta-token"
DEFAULT_META_SECRET = "sandbox-meta-app-secret"
DEFAULT_META_WABA = "200000000000001"
DEFAULT_META_DISPLAY = "15550100001"

E164 = re.compile(r"\+\d{8,15}")


class ConfigError(ValueError):
    """A control-API payload that cannot be applied (answered with HTTP 400)."""


def digits(address: str | None) -> str:
    """Bare digits of a phone address, so `whatsapp:+1500...` and `1500...` compare equal."""
    value = (address or "").strip()
    value = value.removeprefix("whatsapp:")
    return value.removeprefix("+")


def new_twilio_sid(prefix: str = "SM") -> str:
    """Twilio-shaped SID: two-letter prefix + 32 lowercase hex chars."""
    return prefix + uuid.uuid4().hex


def new_wamid(wa_id: str) -> str:
    """WhatsApp message id: `wamid.` + base64 of an opaque, unique blob (like Meta's)."""
    blob = f"{wa_id}_{uuid.uuid4().hex[:20].upper()}".encode()
    return "wamid." + base64.b64encode(blob).decode()


def new_graph_id() -> str:
    """A Graph object id (media, template): 16 digits, like Meta's."""
    return str(10**15 + secrets.randbelow(9 * 10**15))


def new_fbtrace_id() -> str:
    """Meta's per-request trace id (opaque; starts with a letter)."""
    return "A" + secrets.token_urlsafe(16)[:22]


@dataclass
class TwilioAccount:
    account_sid: str
    auth_token: str
    # The numbers (E.164) and Messaging Service SIDs the account owns. Empty: any is taken
    # (the sandbox's default accounts); otherwise a From or service not listed is refused
    # as Twilio refuses it (21606, 21701).
    numbers: list[str] = field(default_factory=list)
    messaging_services: list[str] = field(default_factory=list)

    def owns_from(self, from_: str) -> bool:
        bare = from_.removeprefix("whatsapp:")
        return not (self.numbers or self.messaging_services) or bare in self.numbers

    def owns_service(self, sid: str) -> bool:
        return not (self.numbers or self.messaging_services) or sid in self.messaging_services


def _public(account: Any) -> dict[str, Any]:
    """An account as the control API shows it: owned senders only when some are listed."""
    data = asdict(account)
    for name in ("numbers", "messaging_services"):
        if data.get(name) == []:
            del data[name]
    return data


@dataclass
class MetaAccount:
    phone_number_id: str
    access_token: str
    app_secret: str
    waba_id: str = DEFAULT_META_WABA
    display_phone_number: str = DEFAULT_META_DISPLAY


@dataclass
class Fault:
    """An injected failure for the next matching send requests."""

    id: str
    provider: str = "*"
    status: int | None = None
    code: int | None = None
    message: str | None = None
    count: int | None = None
    rate: float | None = None
    latency_ms: int = 0
    retry_after: float | None = None
    mode: str = "error"
    # Twilio only: answer in RFC 9457 problem-details shape (type, title, status, code,
    # detail), as Twilio's newer APIs do; the twilio client raises TwilioServiceException.
    problem: bool = False
    remaining: int | None = None
    fired: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Gate:
    """What the sandbox decided about a send before looking at its content."""

    latency: float = 0.0
    retry_after: float | None = None
    fault: Fault | None = None


@dataclass
class _Bucket:
    rate: float
    tokens: float
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """Take one token; return 0 when allowed, else seconds until a token is free."""
        now = time.monotonic()
        capacity = max(1.0, self.rate)
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def default_config(
    callback_delay: float = 0.3,
    meta_webhook_url: str | None = None,
    twilio_inbound_url: str | None = None,
) -> dict[str, Any]:
    """The run-time config as it is at start and after `POST /_sandbox/reset`."""
    return {
        "latency_ms": {"twilio": 0, "meta": 0},
        "rate_limit_mps": {"twilio": None, "meta": None},
        "callback_delay": callback_delay,
        "callbacks": {
            "enabled": True,
            "order": "normal",
            "duplicate": False,
            "skip_delivered": False,
            # WhatsApp `read` often arrives with no `delivered` before it: skipped at this
            # rate, drawn from a generator seeded with `seed` at reset and config change.
            "skip_delivered_rate": 0.2,
            "seed": 13,
            # Meta statuses due within this many seconds share one webhook body.
            "batch_window": 0.05,
            # Meta: retries of a webhook answered with anything but 2xx, with backoff.
            "max_retries": 5,
            "retry_backoff": 0.5,
            # Twilio: retries only of a callback whose connection failed (Twilio's `rc`).
            "twilio_retries": 1,
        },
        "meta_webhook_url": meta_webhook_url,
        "twilio_inbound_url": twilio_inbound_url,
    }


def _check_config(cfg: dict[str, Any]) -> None:
    """Reject values the handlers could not use, so a typo fails loudly at the control API."""
    for key in ("latency_ms", "rate_limit_mps"):
        for provider, value in cfg[key].items():
            if provider not in PROVIDERS:
                raise ConfigError(f"{key}: unknown provider {provider!r}")
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and not numeric:
                raise ConfigError(f"{key}.{provider} must be a number or null")
            if (value is not None and value < 0) or (key == "rate_limit_mps" and value == 0):
                raise ConfigError(f"{key}.{provider} must be positive")
        if key == "latency_ms" and None in cfg[key].values():
            raise ConfigError("latency_ms values must be numbers")
    if not isinstance(cfg["callback_delay"], int | float) or cfg["callback_delay"] < 0:
        raise ConfigError("callback_delay must be a non-negative number")
    cb = cfg["callbacks"]
    if cb["order"] not in CALLBACK_ORDERS:
        raise ConfigError(f"callbacks.order must be one of {CALLBACK_ORDERS}")
    for flag in ("enabled", "duplicate", "skip_delivered"):
        if not isinstance(cb[flag], bool):
            raise ConfigError(f"callbacks.{flag} must be a boolean")
    for key in ("max_retries", "twilio_retries", "seed"):
        if not isinstance(cb[key], int) or isinstance(cb[key], bool) or cb[key] < 0:
            raise ConfigError(f"callbacks.{key} must be a non-negative integer")
    rate = cb["skip_delivered_rate"]
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ConfigError("callbacks.skip_delivered_rate must be between 0 and 1")
    window = cb["batch_window"]
    if not isinstance(window, int | float) or isinstance(window, bool) or window < 0:
        raise ConfigError("callbacks.batch_window must be a non-negative number")
    if not isinstance(cb["retry_backoff"], int | float) or cb["retry_backoff"] < 0:
        raise ConfigError("callbacks.retry_backoff must be a non-negative number")
    for key in ("meta_webhook_url", "twilio_inbound_url"):
        if cfg[key] is not None and not re.match(r"https?://", str(cfg[key])):
            raise ConfigError(f"{key} must be an http(s) URL or null")


def _merge(base: dict[str, Any], patch: dict[str, Any], path: str = "") -> None:
    for key, value in patch.items():
        if key not in base:
            raise ConfigError(f"unknown config key {path}{key!r}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}{key} must be an object")
            _merge(base[key], value, f"{path}{key}.")
        else:
            base[key] = value


class SandboxState:
    """All mutable sandbox state; one instance per running sandbox."""

    def __init__(
        self,
        twilio_accounts: list[TwilioAccount] | None = None,
        meta_accounts: list[MetaAccount] | None = None,
        callback_delay: float = 0.3,
        meta_webhook_url: str | None = None,
        twilio_inbound_url: str | None = None,
        receipts_file: str | None = None,
        callback_timeout: float = 5.0,
    ) -> None:
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        if twilio_accounts is None:
            twilio_accounts = [TwilioAccount(DEFAULT_TWILIO_SID, DEFAULT_TWILIO_TOKEN)]
        if meta_accounts is None:
            meta_accounts = [
                MetaAccount(DEFAULT_META_PHONE_ID, DEFAULT_META_TOKEN, DEFAULT_META_SECRET)
            ]
        self.twilio_accounts = {a.account_sid: a for a in twilio_accounts}
        self.meta_accounts = {a.phone_number_id: a for a in meta_accounts}
        self._defaults = default_config(callback_delay, meta_webhook_url, twilio_inbound_url)
        _check_config(self._defaults)
        self.config = copy.deepcopy(self._defaults)
        self.sends: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.callback_log: list[dict[str, Any]] = []
        self.twilio_messages: dict[str, dict[str, Any]] = {}
        # Meta sends to a phone that is off (meta_api.MAGIC_OFFLINE), by wa_id: their
        # `delivered` waits until POST /_sandbox/online.
        self.meta_offline: dict[str, list[tuple[Any, ...]]] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._seq = 0
        self._fault_seq = 0
        self._receipts = open(receipts_file, "a", encoding="utf-8") if receipts_file else None  # noqa: SIM115
        self.scheduler = CallbackScheduler(self._log_callback, timeout=callback_timeout)
        self.meta_batcher = MetaStatusBatcher(self.scheduler)
        self.rng = random.Random(self.config["callbacks"]["seed"])
        self._parts: dict[str, Any] = {}
        self._parts_lock = threading.Lock()

    def part(self, name: str, make: Callable[[], _Part]) -> _Part:
        """The store `name` that a feature module keeps beside this state (media, templates,
        conversations), made on first use; what a reset does to it is that module's call."""
        with self._parts_lock:
            found = self._parts.get(name)
            if found is None:
                found = self._parts[name] = make()
            return found

    # -- config ---------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.config)

    def update_config(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a partial config; all-or-nothing so a bad key leaves the old config."""
        if not isinstance(patch, dict):
            raise ConfigError("config must be a JSON object")
        with self.lock:
            candidate = copy.deepcopy(self.config)
            _merge(candidate, patch)
            _check_config(candidate)
            self.config = candidate
            self._buckets.clear()
            self.rng = random.Random(candidate["callbacks"]["seed"])
            return copy.deepcopy(candidate)

    def reset(self) -> None:
        """Forget sends, faults, callbacks (pending too) and config; keep the accounts."""
        with self.lock:
            self.sends.clear()
            self.faults.clear()
            self.callback_log.clear()
            self.twilio_messages.clear()
            self.meta_offline.clear()
            self._buckets.clear()
            self.config = copy.deepcopy(self._defaults)
            self.rng = random.Random(self.config["callbacks"]["seed"])
            self.scheduler.clear()
            self.meta_batcher.clear()

    # -- accounts -------------------------------------------------------------------------

    def add_account(self, data: dict[str, Any]) -> dict[str, Any]:
        provider = data.get("provider")
        try:
            if provider == "twilio":
                acct: TwilioAccount | MetaAccount = TwilioAccount(
                    str(data["account_sid"]),
                    str(data["auth_token"]),
                    [str(n) for n in data.get("numbers") or []],
                    [str(m) for m in data.get("messaging_services") or []],
                )
                if not re.fullmatch(r"AC[0-9a-f]{32}", acct.account_sid):
                    raise ConfigError("account_sid must be AC followed by 32 hex chars")
                with self.lock:
                    self.twilio_accounts[acct.account_sid] = acct
            elif provider == "meta":
                acct = MetaAccount(
                    str(data["phone_number_id"]),
                    str(data["access_token"]),
                    str(data["app_secret"]),
                    str(data.get("waba_id") or DEFAULT_META_WABA),
                    str(data.get("display_phone_number") or DEFAULT_META_DISPLAY),
                )
                with self.lock:
                    self.meta_accounts[acct.phone_number_id] = acct
            else:
                raise ConfigError("provider must be 'twilio' or 'meta'")
        except KeyError as exc:
            raise ConfigError(f"missing field {exc.args[0]!r}") from None
        return {"provider": provider, **_public(acct)}

    def accounts(self) -> dict[str, Any]:
        with self.lock:
            return {
                "twilio": [_public(a) for a in self.twilio_accounts.values()],
                "meta": [_public(a) for a in self.meta_accounts.values()],
            }

    # -- faults ---------------------------------------------------------------------------

    def add_fault(self, data: dict[str, Any]) -> Fault:
        if not isinstance(data, dict):
            raise ConfigError("fault must be a JSON object")
        known = {f for f in Fault.__dataclass_fields__ if f not in ("id", "remaining", "fired")}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown fault fields: {sorted(unknown)}")
        provider = data.get("provider", "*")
        mode = data.get("mode", "error")
        if provider not in (*PROVIDERS, "*"):
            raise ConfigError("provider must be 'twilio', 'meta' or '*'")
        if mode not in FAULT_MODES:
            raise ConfigError(f"mode must be one of {FAULT_MODES}")
        count, rate = data.get("count"), data.get("rate")
        if count is not None and rate is not None:
            raise ConfigError("give either count or rate, not both")
        if rate is not None and not (isinstance(rate, int | float) and 0 <= rate <= 1):
            raise ConfigError("rate must be between 0 and 1")
        if rate is None:
            count = 1 if count is None else count
            if not isinstance(count, int) or count < 1:
                raise ConfigError("count must be a positive integer")
        status = data.get("status")
        if status is not None and not (isinstance(status, int) and 400 <= status <= 599):
            raise ConfigError("status must be an HTTP error status (400-599)")
        code = data.get("code")
        if code is not None and not isinstance(code, int):
            raise ConfigError("code must be an integer")
        retry_after = data.get("retry_after")
        if retry_after is not None and not (
            isinstance(retry_after, int | float) and retry_after >= 0
        ):
            raise ConfigError("retry_after must be a non-negative number of seconds or null")
        if not isinstance(data.get("problem", False), bool):
            raise ConfigError("problem must be a boolean")
        latency = data.get("latency_ms") or 0
        if not isinstance(latency, int | float) or latency < 0:
            raise ConfigError("latency_ms must be a non-negative number")
        with self.lock:
            self._fault_seq += 1
            fault = Fault(
                id=f"flt_{self._fault_seq}",
                provider=provider,
                status=status,
                code=code,
                message=data.get("message"),
                count=count,
                rate=rate,
                latency_ms=int(latency),
                retry_after=retry_after,
                mode=mode,
                problem=bool(data.get("problem", False)),
                remaining=count,
            )
            self.faults.append(fault)
        return fault

    def list_faults(self) -> list[dict[str, Any]]:
        with self.lock:
            return [f.to_dict() for f in self.faults]

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, provider: str) -> Fault | None:
        for fault in list(self.faults):
            if fault.provider not in (provider, "*"):
                continue
            if fault.rate is not None:
                if self.rng.random() >= fault.rate:
                    continue
            else:
                fault.remaining = (fault.remaining or 1) - 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
            fault.fired += 1
            return copy.copy(fault)
        return None

    # -- send admission -------------------------------------------------------------------

    def admit(self, provider: str, sender: str) -> Gate:
        """Decide latency, rate limiting and fault for one authenticated send request."""
        with self.lock:
            gate = Gate(latency=self.config["latency_ms"][provider] / 1000.0)
            rate = self.config["rate_limit_mps"][provider]
            if rate:
                bucket = self._buckets.setdefault((provider, sender), _Bucket(rate, max(1.0, rate)))
                wait = bucket.take()
                if wait > 0:
                    gate.retry_after = wait
                    return gate
            gate.fault = self._take_fault(provider)
            return gate

    def sleep(self, seconds: float) -> None:
        """Sleep that ends early when the sandbox stops, so shutdown never hangs."""
        if seconds > 0:
            self.stopping.wait(seconds)

    # -- receipts -------------------------------------------------------------------------

    def record_send(self, **fields: Any) -> dict[str, Any]:
        """Append one send receipt (and mirror it to the receipts file)."""
        with self.lock:
            self._seq += 1
            record = {
                "seq": self._seq,
                "provider": fields.pop("provider"),
                "received_at": fields.pop("received_at", time.time()),
                "accepted": False,
                "status_code": None,
                "herald_id": None,
                "provider_message_id": None,
                "to": None,
                "from": None,
                "channel": None,
                "type": None,
                "body": None,
                "request": None,
                "error_code": None,
                "fault_id": None,
                "answered": True,
                **fields,
            }
            self.sends.append(record)
            if self._receipts is not None:
                self._receipts.write(json.dumps(record, default=str) + "\n")
                self._receipts.flush()
            return copy.deepcopy(record)

    def query_sends(
        self,
        provider: str | None = None,
        herald_id: str | None = None,
        to: str | None = None,
        accepted: bool | None = None,
    ) -> list[dict[str, Any]]:
        with self.lock:
            rows = [
                r
                for r in self.sends
                if (provider is None or r["provider"] == provider)
                and (herald_id is None or r["herald_id"] == herald_id)
                and (to is None or digits(r["to"]) == digits(to))
                and (accepted is None or r["accepted"] is accepted)
            ]
            return copy.deepcopy(rows)

    def summary(self) -> dict[str, Any]:
        """Counts per provider plus herald_ids accepted more than once (double sends)."""
        with self.lock:
            by_provider = {p: {"received": 0, "accepted": 0, "rejected": 0} for p in PROVIDERS}
            accepted_ids: dict[str, int] = {}
            for r in self.sends:
                counts = by_provider[r["provider"]]
                counts["received"] += 1
                counts["accepted" if r["accepted"] else "rejected"] += 1
                if r["accepted"] and r["herald_id"]:
                    accepted_ids[r["herald_id"]] = accepted_ids.get(r["herald_id"], 0) + 1
            return {
                "total": len(self.sends),
                "accepted": sum(c["accepted"] for c in by_provider.values()),
                "rejected": sum(c["rejected"] for c in by_provider.values()),
                "by_provider": by_provider,
                "duplicates": {k: v for k, v in accepted_ids.items() if v > 1},
            }

    # -- callbacks log --------------------------------------------------------------------

    def _log_callback(self, entry: dict[str, Any]) -> None:
        with self.lock:
            entry["id"] = len(self.callback_log) + 1
            self.callback_log.append(entry)

    def query_callbacks(
        self, provider: str | None = None, message_id: str | None = None
    ) -> list[dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(
                [
                    c
                    for c in self.callback_log
                    if (provider is None or c["provider"] == provider)
                    and (
                        message_id is None
                        or c["message_id"] == message_id
                        or message_id in c.get("message_ids", ())
                    )
                ]
            )

    def close(self) -> None:
        """Stop background work and close the receipts file."""
        self.stopping.set()
        self.scheduler.stop()
        with self.lock:
            if self._receipts is not None:
                self._receipts.close()
                self._receipts = None
