"""A person's data: erasure on request, and the opt-out that outlives it."""
