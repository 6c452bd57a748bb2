"""Who sends: tenants, API keys, provider accounts and their encrypted secrets, senders."""
