"""Herald's provider sandbox: a local stand-in for Twilio's and Meta's messaging APIs.

Start it in-process with `serve(SandboxState(...))` or as `python -m sandbox`.
"""

from __future__ import annotations

from sandbox.app import SandboxServer, create_sandbox_app, serve
from sandbox.state import MetaAccount, SandboxState, TwilioAccount

__all__ = [
    "MetaAccount",
    "SandboxServer",
    "SandboxState",
    "TwilioAccount",
    "create_sandbox_app",
    "serve",
]
