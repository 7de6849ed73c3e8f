"""The WSGI entry point for gunicorn: ``gunicorn webhooks_app.wsgi:app``."""

from webhooks_app import create_app
from webhooks_app.connection import CloseAfterUnreadBody

app = create_app()
app.wsgi_app = CloseAfterUnreadBody(app.wsgi_app)  # type: ignore[method-assign]
