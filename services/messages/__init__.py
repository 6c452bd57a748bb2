"""A message's life: accept, dispatch, claim and send, record, status, reconcile, expiry."""
