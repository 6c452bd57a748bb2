"""Configuration, read once from the environment and checked strictly.

A bad value fails at start-up with a message naming the variable, instead of
surfacing later as a confusing runtime error in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path


def embedded_data_dir(home: Path) -> Path:
    """Where the embedded PostgreSQL of `home` keeps its data (herald/postgres.py runs it)."""
    return home / "postgres"


def default_url(home: Path) -> str:
    """The URL of `home`'s embedded server (socket in its data directory): the database
    when DATABASE_URL is unset."""
    return f"postgresql+psycopg://postgres@/postgres?host={embedded_data_dir(home)}"


class ConfigError(ValueError):
    """A configuration variable has a value Herald cannot use."""


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _positive(value: float, name: str) -> float:
    if value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {value}")
    return value


def _non_negative(value: float, name: str) -> float:
    if not value >= 0 or value == float("inf"):  # NaN and inf too
        raise ConfigError(f"{name} must be a number of at least 0, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _decimal(env: dict[str, str], name: str, default: str) -> Decimal:
    raw = env.get(name) or default
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal price like 0.015, got {raw!r}") from None


def _price_table(env: dict[str, str], name: str) -> tuple[str, dict[str, Decimal]] | None:
    """(currency, price per category) from a JSON object such as
    `{"currency": "USD", "marketing": "0.025", "utility": "0.004"}`."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        table = json.loads(raw)
        currency = table.pop("currency", "USD")
        if not isinstance(currency, str) or not 0 < len(currency) <= 8:
            raise ValueError
        prices = {str(k): Decimal(str(v)) for k, v in table.items()}
    except (ValueError, AttributeError, InvalidOperation):
        raise ConfigError(
            f'{name} must be a JSON object like {{"currency": "USD", "marketing": "0.025"}}'
        ) from None
    return currency.upper(), prices


def _bounded(value: float, name: str, low: float, high: float) -> float:
    """`value` if low < value <= high: a setting that only makes sense in a range."""
    if not low < value <= high:
        raise ConfigError(f"{name} must be greater than {low:g} and at most {high:g}, got {value}")
    return value


def _url(env: dict[str, str], name: str, default: str) -> str:
    value = (env.get(name) or default).rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value


SECRET_KEY_BYTES = 32
JWT_SECRET_MIN = 32
METRICS_TOKEN_MIN = 16
ADMIN_TOKEN_MIN = 16
GENERATE_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


def key_bytes(text: str) -> bytes | None:
    """The bytes a key written in hex or base64 (either alphabet, padding optional) holds."""
    text = text.strip()
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
        return bytes.fromhex(text)
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def check_secret_key(value: str, name: str = "HERALD_SECRET_KEY") -> str:
    """`value` when it is a random key of SECRET_KEY_BYTES or more, else ConfigError.

    A key signs the console's cookies, which anyone can get: a passphrase behind them is
    guessed offline (a dictionary word fell in 0.4 s), so only a key of full strength is
    taken. Half its bytes distinct at least: a repeated pattern is no random key."""
    raw = key_bytes(value)
    if raw is None or len(raw) < SECRET_KEY_BYTES or len(set(raw)) < SECRET_KEY_BYTES // 2:
        raise ConfigError(
            f"{name} must be a random key of at least {SECRET_KEY_BYTES} bytes in base64 or "
            f"hex, such as a Fernet key ({GENERATE_KEY}); a passphrase is not accepted: to "
            "read secrets stored under one, set it as HERALD_SECRET_KEY_PREVIOUS "
            "(docs/operations.md)"
        )
    return value


def _token(env: dict[str, str], name: str, minimum: int) -> str | None:
    """A shared secret (unset: None) of at least `minimum` characters, 8 of them distinct."""
    value = env.get(name) or None
    if value is not None and (len(value) < minimum or len(set(value)) < 8):
        raise ConfigError(
            f"{name} must be at least {minimum} characters, not a repetition "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


@dataclass(frozen=True)
class Settings:
    """Every setting Herald reads; see the README's configuration table."""

    home: Path
    database_url: str
    redis_url: str | None
    secret_key: str | None
    public_url: str
    twilio_api_base: str
    meta_graph_base: str
    meta_graph_version: str
    jwt_secret: str | None
    queue_prefix: str
    max_body_bytes: int
    http_timeout: float
    send_lease_seconds: int
    settle_seconds: int
    max_attempts: int
    sweep_after_seconds: int
    # Provider failover (services/policy/health.py): errors within the window that
    # move new messages to a tenant's next sender.
    provider_failover_errors: int
    provider_failover_window_seconds: int
    log_format: str
    log_level: str
    meta_app_secret: str | None = None
    meta_verify_token: str | None = None
    legacy_tenant: str | None = None
    allow_private_callbacks: bool = False
    default_hourly_limit: int = 100
    default_daily_limit: int = 1000
    default_international_daily_limit: int = 100
    pair_pacing_seconds: float = 6.0
    publish_interval: float = 0.2
    mps_meta: float = 80.0
    mps_twilio_whatsapp: float = 10.0
    mps_twilio_sms: float = 10.0
    price_whatsapp: Decimal = Decimal("0.015")
    price_sms: Decimal = Decimal("0.0079")
    jwt_max_age_seconds: int = 86400
    metrics_token: str | None = None
    reconcile_after_minutes: float = 10.0
    reconcile_rate: float = 20.0  # Twilio fetches a second a reconcile run may make
    admin_token: str | None = None
    # Decrypts what was stored under a former HERALD_SECRET_KEY; never encrypts or signs.
    previous_secret_key: str | None = None
    sandbox_url: str | None = None
    template_checks: bool = True
    # api/fastpath.py in front of Flask for the two hot routes; HERALD_FAST_PATH=0: Flask alone.
    fast_path: bool = True
    twilio_content_base: str | None = None
    media_max_bytes: int = 100 * 1024 * 1024  # Meta's largest type (documents, 100 MB)
    # The estimate of services/reporting/usage.py.
    meta_prices: tuple[str, dict[str, Decimal]] | None = None
    # A tenant's expensive reads (lists, usage, the console's pages) per second; 0 = no limit.
    read_rate: float = 10.0
    # Recipients one campaign may list (JSON or CSV rows): services/campaigns/campaigns.py.
    campaign_max_recipients: int = 100_000
    # Events out (services/reporting/events.py, outbound.py, fairness.py).
    events_deadline_seconds: float = 10.0
    events_concurrency: int = 8
    events_per_tenant: int = 4
    events_per_host: int = 4
    events_breaker_failures: int = 5
    events_breaker_seconds: int = 60


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: the process environment)."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("HERALD_HOME") or ".herald").resolve()
    # Unset: the embedded server of HERALD_HOME, which `herald` commands start (herald.postgres).
    database_url = env.get("DATABASE_URL") or default_url(home)
    if database_url.startswith("postgresql://"):
        # psycopg 3 is the driver Herald ships; plain URLs would pick psycopg2.
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    port = _int(env, "PORT", 8000, minimum=1)
    log_format = env.get("HERALD_LOG_FORMAT", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"HERALD_LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
    version = env.get("META_GRAPH_VERSION") or "v22.0"
    if not (version.startswith("v") and version[1:].replace(".", "").isdigit()):
        raise ConfigError(f"META_GRAPH_VERSION must look like 'v22.0', got {version!r}")
    admin_token = env.get("HERALD_ADMIN_TOKEN") or None
    if admin_token is not None and len(admin_token) < ADMIN_TOKEN_MIN:
        raise ConfigError(f"HERALD_ADMIN_TOKEN must be at least {ADMIN_TOKEN_MIN} characters")
    secret_key = env.get("HERALD_SECRET_KEY") or None
    if secret_key is not None:
        check_secret_key(secret_key)
    sandbox_url = _url(env, "HERALD_SANDBOX_URL", "") if env.get("HERALD_SANDBOX_URL") else None
    return Settings(
        home=home,
        database_url=database_url,
        redis_url=env.get("REDIS_URL") or None,
        secret_key=secret_key,
        public_url=_url(env, "HERALD_PUBLIC_URL", f"http://127.0.0.1:{port}"),
        twilio_api_base=_url(env, "TWILIO_API_BASE", "https://api.twilio.com"),
        meta_graph_base=_url(env, "META_GRAPH_BASE", "https://graph.facebook.com"),
        meta_graph_version=version,
        jwt_secret=_token(env, "HERALD_JWT_SECRET", JWT_SECRET_MIN),
        queue_prefix=env.get("HERALD_QUEUE_PREFIX", ""),
        max_body_bytes=_int(env, "HERALD_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
        http_timeout=_float(env, "HERALD_HTTP_TIMEOUT", 10.0),
        send_lease_seconds=_int(env, "HERALD_SEND_LEASE_SECONDS", 60, minimum=1),
        settle_seconds=_int(env, "HERALD_SETTLE_SECONDS", 30, minimum=1),
        max_attempts=_int(env, "HERALD_MAX_ATTEMPTS", 8, minimum=1),
        sweep_after_seconds=_int(env, "HERALD_SWEEP_AFTER_SECONDS", 30, minimum=1),
        provider_failover_errors=_int(env, "HERALD_PROVIDER_FAILOVER_ERRORS", 50, minimum=1),
        provider_failover_window_seconds=_int(
            env, "HERALD_PROVIDER_FAILOVER_WINDOW_SECONDS", 60, minimum=1
        ),
        log_format=log_format,
        log_level=env.get("HERALD_LOG_LEVEL", "INFO").upper(),
        meta_app_secret=env.get("META_APP_SECRET") or None,
        meta_verify_token=env.get("META_VERIFY_TOKEN") or None,
        legacy_tenant=env.get("HERALD_LEGACY_TENANT") or None,
        allow_private_callbacks=_bool(env, "HERALD_ALLOW_PRIVATE_CALLBACKS", False),
        default_hourly_limit=_int(env, "HERALD_DEFAULT_HOURLY_LIMIT", 100),
        default_daily_limit=_int(env, "HERALD_DEFAULT_DAILY_LIMIT", 1000),
        default_international_daily_limit=_int(
            env, "HERALD_DEFAULT_INTERNATIONAL_DAILY_LIMIT", 100
        ),
        pair_pacing_seconds=_float(env, "HERALD_PAIR_PACING_SECONDS", 6.0),
        publish_interval=_float(env, "HERALD_PUBLISH_INTERVAL_MS", 200.0) / 1000,
        mps_meta=_float(env, "HERALD_MPS_META", 80.0),
        mps_twilio_whatsapp=_float(env, "HERALD_MPS_TWILIO_WHATSAPP", 10.0),
        mps_twilio_sms=_float(env, "HERALD_MPS_TWILIO_SMS", 10.0),
        price_whatsapp=_decimal(env, "HERALD_PRICE_WHATSAPP", "0.015"),
        price_sms=_decimal(env, "HERALD_PRICE_SMS", "0.0079"),
        jwt_max_age_seconds=_int(env, "HERALD_JWT_MAX_AGE_SECONDS", 86400, minimum=1),
        metrics_token=_token(env, "HERALD_METRICS_TOKEN", METRICS_TOKEN_MIN),
        reconcile_after_minutes=_positive(
            _float(env, "HERALD_RECONCILE_AFTER_MINUTES", 10.0), "HERALD_RECONCILE_AFTER_MINUTES"
        ),
        reconcile_rate=_positive(
            _float(env, "HERALD_RECONCILE_RATE", 20.0), "HERALD_RECONCILE_RATE"
        ),
        admin_token=admin_token,
        previous_secret_key=env.get("HERALD_SECRET_KEY_PREVIOUS") or None,
        sandbox_url=sandbox_url,
        template_checks=_bool(env, "HERALD_TEMPLATE_CHECKS", True),
        fast_path=_bool(env, "HERALD_FAST_PATH", True),
        twilio_content_base=_url(env, "TWILIO_CONTENT_BASE", "")
        if env.get("TWILIO_CONTENT_BASE")
        else None,
        media_max_bytes=_int(env, "HERALD_MEDIA_MAX_BYTES", 100 * 1024 * 1024, minimum=1),
        meta_prices=_price_table(env, "HERALD_META_PRICES"),
        read_rate=_non_negative(_float(env, "HERALD_READ_RATE", 10.0), "HERALD_READ_RATE"),
        campaign_max_recipients=_int(env, "HERALD_CAMPAIGN_MAX_RECIPIENTS", 100_000, minimum=1),
        # Below the 60 s lock a message's event delivery holds (services/reporting/events.py).
        events_deadline_seconds=_bounded(
            _float(env, "HERALD_EVENTS_DEADLINE_SECONDS", 10.0),
            "HERALD_EVENTS_DEADLINE_SECONDS",
            0,
            30,
        ),
        events_concurrency=_int(env, "HERALD_EVENTS_CONCURRENCY", 8, minimum=1),
        events_per_tenant=_int(env, "HERALD_EVENTS_PER_TENANT", 4, minimum=1),
        events_per_host=_int(env, "HERALD_EVENTS_PER_HOST", 4, minimum=1),
        events_breaker_failures=_int(env, "HERALD_EVENTS_BREAKER_FAILURES", 5, minimum=1),
        events_breaker_seconds=_int(env, "HERALD_EVENTS_BREAKER_SECONDS", 60, minimum=1),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
