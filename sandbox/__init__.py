"""Herald's provider sandbox: a local stand-in for Twilio's and Meta's messaging APIs.

Start it in-process with `sandbox.app.serve(SandboxState(...))` or as `python -m sandbox`.
This file imports nothing, so that importing any one module of the sandbox does not load
the whole app and no module's import runs back through here.
"""
