"""``make run``'s one-time login link: ``/admin/login?token=...`` (the Jupyter convention).

On a loopback bind with no ADMIN_USERNAME / ADMIN_PASSWORD_HASH, ``webhooks_app.devserver``
makes a random token, hands it to the web processes in ``WEBHOOKS_ADMIN_LOGIN_TOKEN`` and prints
the link. Opening it starts a session as ``local``; the token (and every session it started,
see ``auth._fingerprint``) is valid until that ``make run`` stops. A deployment never has one.
"""

from __future__ import annotations

import hmac

from webhooks_app.config import Settings


def token_matches(settings: Settings, token: str | None) -> bool:
    expected = settings.admin_login_token
    if expected is None or not token:
        return False
    return hmac.compare_digest(token.encode(), expected.encode())
