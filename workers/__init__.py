"""Celery workers: ``celery -A workers.celery_app worker`` and ``... beat``."""
