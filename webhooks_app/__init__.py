"""Assisters Webhooks: receive, verify, store and process Assisters API webhook events."""

from __future__ import annotations

from flask import Flask

from webhooks_app import web
from webhooks_app.config import Settings
from webhooks_app.database import Database
from webhooks_app.dispatch import Dispatcher
from webhooks_app.events import Event
from webhooks_app.extensions import celery_init_app, celery_publisher
from webhooks_app.hosts import configure_hosts
from webhooks_app.jsonprovider import DepthSafeJSONProvider
from webhooks_app.logs import configure_logging
from webhooks_app.registry import load_handlers, on, registry
from webhooks_app.service import Service

__all__ = ["Event", "Settings", "create_app", "on"]


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__, instance_path=str(settings.instance_dir.resolve()))
    app.json = DepthSafeJSONProvider(app)
    configure_hosts(app, settings.trusted_hosts)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        TESTING=settings.testing,
    )
    web.trust_proxies(app, settings.trusted_proxies)
    web.init_app(app)
    configure_logging(settings.log_level, settings.log_format)

    db = Database()
    db.configure(settings)
    celery = celery_init_app(app, settings)
    load_handlers(settings.handlers_module)
    publish = celery_publisher(celery, settings.handoff_batch_size)
    service = Service(
        settings=settings,
        db=db,
        celery=celery,
        registry=registry,
        dispatcher=Dispatcher(db, registry, settings),
        publish=publish,
    )
    # Stored subscription secrets count beside WEBHOOK_SECRETS; one that cannot be decrypted
    # (a wrong or missing ENCRYPTION_KEYS) stops startup here rather than failing deliveries.
    service.secret_sources.append(service.subscriptions.stored_secrets)
    service.subscriptions.check_stored_secrets()
    app.extensions["webhooks"] = service

    from webhooks_app import admin, api, cli, errors, health, home, metrics, receiver

    service.dispatcher.observer = metrics.MetricsObserver()

    errors.register_error_handlers(app)
    app.register_blueprint(receiver.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(home.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(metrics.bp)
    # CSRF covers every other state-changing route; the webhook endpoints are signed instead,
    # the JSON API checks CSRF itself for cookie-authenticated calls, and /metrics only reads.
    admin.init_app(app, settings, csrf_exempt=[receiver.bp, health.bp, api.bp, metrics.bp])
    cli.register(app)
    # POST /webhooks/events, the hot path, skips Flask's request machinery (its one route).
    app.wsgi_app = receiver.DeliveryRoute(app.wsgi_app, service)  # type: ignore[method-assign]
    return app
