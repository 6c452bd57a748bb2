"""Whether and when a message may go: rate limits, the sender breaker, opt-out and the
24-hour window (with the contacts that hold them), quiet hours."""
