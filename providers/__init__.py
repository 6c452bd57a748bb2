"""Provider registry: one instance of each provider per process (pooled clients)."""

from __future__ import annotations

import threading

from providers.base import ErrorKind, OutboundMessage, Provider, ProviderError, SendResult

_lock = threading.Lock()
_instances: dict[str, Provider] = {}


def get_provider(name: str) -> Provider:
    """The process's instance of provider `name`, made on first use."""
    provider = _instances.get(name)  # no lock on the hot path: set once, read often
    if provider is not None:
        return provider
    with _lock:
        provider = _instances.get(name)
        if provider is None:
            if name == "twilio":
                from providers.twilio import TwilioProvider

                provider = TwilioProvider()
            elif name == "meta":
                from providers.meta import MetaProvider

                provider = MetaProvider()
            elif name == "simulator":  # test keys' messages: never a network call
                from providers.simulator import SimulatorProvider

                provider = SimulatorProvider()
            else:
                raise KeyError(f"unknown provider {name!r}")
            _instances[name] = provider
        return provider


def error_name(provider: str, code: str | None) -> str | None:
    """Herald's name for a provider error code (`21211` -> `invalid_number`), if it has one."""
    if not code or not str(code).isdigit():
        return None
    if provider == "twilio":
        from providers.twilio import NAMES
    elif provider == "meta":
        from providers.meta import NAMES
    else:
        return None
    return NAMES.get(int(code))


def reset_providers() -> None:
    """Drop pooled clients (after fork, or when tests change base URLs)."""
    with _lock:
        _instances.clear()


__all__ = [
    "ErrorKind",
    "OutboundMessage",
    "Provider",
    "ProviderError",
    "SendResult",
    "error_name",
    "get_provider",
    "reset_providers",
]
