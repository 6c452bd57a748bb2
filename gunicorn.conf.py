# gunicorn reads this file from its working directory by default: Herald's settings
# (herald/gunicorn_conf.py: refused requests answered in the JSON error shape).
from herald.gunicorn_conf import *  # noqa: F403
