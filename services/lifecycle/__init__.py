"""Data lifecycle: how long each tenant's content is kept and the purge that ends it."""
