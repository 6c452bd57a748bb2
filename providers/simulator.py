"""The simulator: the provider of every message sent with a test key.

It takes a message as a provider would and answers at once, in this process, without a
network client of any kind (it holds none, imports none and is given no credentials it
uses): whatever accounts the tenant has, a test message never leaves Herald. What
happens next is decided by the recipient's number (`OUTCOMES`, the magic numbers, as
GOV.UK Notify's test numbers): services/messages/simulation.py applies those statuses
through the status machine callbacks use, so events out, the console and the usage
see them as they would see a real provider's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from providers.base import AccountCredentials, OutboundMessage, SendResult

NAME = "simulator"
ID_PREFIX = "SIM"  # a simulated provider message id: never one of a real provider's


@dataclass(frozen=True)
class SimulatedStatus:
    """One status the simulator reports after accepting a message."""

    status: str  # delivered | undelivered | failed | read
    error_code: str | None = None  # Herald's name, as a real provider's code would map
    error_message: str | None = None


DELIVERED = (SimulatedStatus("delivered"),)
# Magic numbers (E.164, NANP numbers set aside for fiction): what happens after the
# simulator accepted the message. Any other number is delivered.
OUTCOMES: dict[str, tuple[SimulatedStatus, ...]] = {
    "+12015550200": DELIVERED,
    "+12015550201": (
        SimulatedStatus(
            "undelivered",
            "unknown_destination",
            "simulated permanent failure: the number does not exist",
        ),
    ),
    "+12015550202": (
        SimulatedStatus(
            "undelivered",
            "unreachable",
            "simulated temporary failure: the handset is off or out of coverage",
        ),
    ),
    "+12015550203": (),  # stays `sent`: no delivery receipt ever comes
    "+12015550204": (SimulatedStatus("delivered"), SimulatedStatus("read")),
}


def outcome_for(to: str) -> tuple[SimulatedStatus, ...]:
    """The statuses a test message to `to` gets after `sent`, in order."""
    return OUTCOMES.get(to.removeprefix("whatsapp:"), DELIVERED)


def simulated_id(herald_id: str) -> str:
    """The simulator's id for a message: Herald's own, so a resend after a lost answer
    is the same "copy"."""
    return f"{ID_PREFIX}{herald_id}"


class SimulatorProvider:
    """The Provider interface, answered in process: accepted, never sent."""

    name = NAME

    def send(self, account: AccountCredentials, message: OutboundMessage) -> SendResult:
        """Accept `message` at once; nothing is sent (the account is not used)."""
        return SendResult(provider_message_id=simulated_id(message.herald_id), native_status=NAME)

    def find_sent(
        self, account: AccountCredentials, message: OutboundMessage, since: datetime
    ) -> list[SendResult]:
        """None: the simulator answers every attempt, so no earlier copy goes unknown."""
        return []
