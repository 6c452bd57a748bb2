"""The naive pattern Herald is measured against (bench/compare.py): a Flask view
validates a little and calls `task.delay()`, a Celery task calls the Twilio client.
Fire-and-forget: nothing is stored, a lost task is a lost message, no status is
ever learnt. Configured by environment: NAIVE_BROKER_URL, NAIVE_QUEUE,
TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_SMS_FROM, TWILIO_API_BASE (the
sandbox, set as Herald sets it), NAIVE_STATUS_CALLBACK (optional)."""

import os
from functools import cache

from celery import Celery
from flask import Flask, jsonify, request
from twilio.rest import Client

env = os.environ
celery = Celery("naive", broker=env.get("NAIVE_BROKER_URL", "redis://127.0.0.1:6379/0"))
celery.conf.update(
    task_default_queue=env.get("NAIVE_QUEUE", "naive"),
    task_ignore_result=True,
    broker_transport_options={"global_keyprefix": env.get("NAIVE_QUEUE", "naive") + ":"},
)
app = Flask(__name__)


@cache
def twilio() -> Client:
    client = Client(env["TWILIO_ACCOUNT_SID"], env["TWILIO_AUTH_TOKEN"])
    client.api.base_url = env.get("TWILIO_API_BASE", "https://api.twilio.com")
    return client


@celery.task(name="naive.send_sms")
def send_sms(to: str, body: str) -> None:
    callback = env.get("NAIVE_STATUS_CALLBACK")
    extra = {"status_callback": callback} if callback else {}
    twilio().messages.create(to=to, from_=env["TWILIO_SMS_FROM"], body=body, **extra)


@app.post("/messages")
def create():  # type: ignore[no-untyped-def]
    data = request.get_json(silent=True) or {}
    to, body = data.get("to"), data.get("body")
    if not (isinstance(to, str) and to.startswith("+") and isinstance(body, str) and body):
        return jsonify(error="'to' (E.164) and 'body' are required"), 400
    send_sms.delay(to, body)
    return jsonify(status="queued"), 202


@app.post("/twilio/status")
def status():  # type: ignore[no-untyped-def]
    return "", 204  # the naive app never records a status; it only answers
