"""The Celery face of Herald: the app, thin tasks, the beat schedule."""
