"""gunicorn settings, read from the environment as PaaS set it ($PORT, $WEB_CONCURRENCY)."""

import multiprocessing
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
# Sync workers: each request is short (verify, one insert, answer); no keep-alive imbalance.
worker_class = "sync"
# A provider gives up after 10-15 s; answer or fail well before that.
timeout = 30
graceful_timeout = 20
keepalive = 2
# Without it a worker could be forked holding the parent's DB connections and relay thread.
preload_app = False
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG") else None
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
