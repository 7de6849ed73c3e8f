"""The WSGI entry point for gunicorn: ``gunicorn webhooks_app.wsgi:app``."""

from webhooks_app import create_app

app = create_app()
