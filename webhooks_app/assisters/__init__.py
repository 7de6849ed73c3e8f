"""The Assisters API client: typed errors, seed-conformant retries, idempotent POSTs."""

from webhooks_app.assisters.client import ApiKey, AssistersClient, Model, WebhookSubscription
from webhooks_app.assisters.errors import (
    AssistersError,
    BadRequest,
    ConnectionFailed,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
)

__all__ = [
    "ApiKey",
    "AssistersClient",
    "AssistersError",
    "BadRequest",
    "ConnectionFailed",
    "Model",
    "NotFound",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "WebhookSubscription",
]
