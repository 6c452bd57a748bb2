"""Herald: asynchronous, crash-safe WhatsApp and SMS dispatch.

This package holds what every process shares: configuration, logging, the
command-line tool and the `make run` supervisor.
"""
