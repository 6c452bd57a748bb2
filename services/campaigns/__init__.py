"""Campaigns: one content to many recipients, released in throttled batches."""
