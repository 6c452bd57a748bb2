"""What Herald tells: the console's queries, usage, metrics, events out to tenants."""
