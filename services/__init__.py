"""The domain layer: the business rules both the API and the workers call.

No rule lives in a Flask view or a Celery task body; those only translate
between their transport and these functions.
"""
