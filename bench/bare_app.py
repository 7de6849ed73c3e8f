"""The bare Flask endpoint the intake is compared with: answers 200, does no work.

Served by the same gunicorn configuration as the real app (``gunicorn.conf.py``), so the ratio
``intake / bare`` shows what verification, the durable commit and the hand-off cost.
"""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.post("/webhooks/events")
def receive() -> tuple[dict[str, str], int]:
    request.get_data(cache=False)  # read the body, as any receiver must
    return {"id": "bare", "status": "accepted"}, 200


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
