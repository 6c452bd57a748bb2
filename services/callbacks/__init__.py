"""What providers tell Herald: status callbacks and inbound messages, per provider, kept
in the inbox until applied."""
