"""Building signed deliveries for tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

from webhooks_app.signatures import sign_headers

TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def delivery(
    event_type: str = "chat.completion",
    data: dict[str, Any] | None = None,
    *,
    msg_id: str | None = None,
    secret: str = TEST_SECRET,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A JSON body and the headers (signature and content type) that deliver it."""
    body = json.dumps(
        {"event": event_type, "data": data if data is not None else {"id": "chat_123"}}
    ).encode()
    headers = sign_headers(secret, msg_id or f"msg_{uuid.uuid4().hex}", body, timestamp)
    headers["Content-Type"] = "application/json"
    return body, headers
