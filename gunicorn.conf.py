"""gunicorn settings, read from the environment as PaaS set it ($PORT, $WEB_CONCURRENCY).

Metrics of all workers are added up through files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
temporary directory when unset).
"""

import logging
import multiprocessing
import os
import shutil
import tempfile

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# One process per core: the threads below cover the waits. Twice as many processes only added
# context switches (bench/HISTORY.md).
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
# The worker class (WEB_WORKER_CLASS). gevent, the default: each connection is a greenlet, so a
# client that sends slowly, or opens connections and sends nothing, costs a socket, not one of a
# few threads, and a request's head must arrive within `keepalive` seconds or the connection is
# closed: 16 clients trickling a byte a second leave the service answering (tests/hardening/
# test_slow_clients.py). gthread keeps a provider's connection alive as gevent does, but a slow
# client holds one of its WEB_THREADS threads for as long as it trickles: only behind a proxy
# that buffers whole requests before passing them on (README, "Security").
worker_class = os.environ.get("WEB_WORKER_CLASS", "gevent")
if worker_class not in {"gevent", "gthread"}:
    raise SystemExit("WEB_WORKER_CLASS must be gevent or gthread")
# gthread's threads per process; under both classes WEB_THREADS also sizes each process's intake
# connection pool (Settings.web_threads): more concurrent requests wait for a connection.
threads = int(os.environ.get("WEB_THREADS", "4"))
# gevent: connections open at once per process (idle and slow ones included).
worker_connections = int(os.environ.get("WEB_CONNECTIONS", "1000"))
# A provider gives up after 10-15 s; answer or fail well before that.
timeout = 30
graceful_timeout = 20
keepalive = 2
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections over them by address. With one shared socket, the worker that wakes first accepts
# whatever arrives at once, and with keep-alive it keeps those connections, all on one process:
# one core's worth of requests (bench/HISTORY.md).
# WEB_REUSE_PORT=0 goes back to one socket shared by all workers.
reuse_port = os.environ.get("WEB_REUSE_PORT", "1") != "0"
# Without it a worker could be forked holding the parent's DB connections.
preload_app = False
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG") else None
errorlog = "-"
# gunicorn 27's control socket (for gunicornc) is unused here, and every master of one user
# would share its one path in $HOME. Older gunicorn ignores the setting.
control_socket_disable = True
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

_metrics: dict[str, str] = {}


class _ListeningAt(logging.Filter):
    """With ``reuse_port`` each worker binds its own socket and the master holds none, so
    gunicorn logs ``Listening at:  (pid)``: name the configured addresses instead."""

    def __init__(self, addresses: str) -> None:
        super().__init__()
        self.addresses = addresses

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        listening = str(record.msg).startswith("Listening at:")
        if listening and isinstance(args, tuple) and args and not args[0]:
            record.args = (self.addresses, *args[1:])
        return True


def on_starting(server):  # type: ignore[no-untyped-def]
    addresses = ",".join(f"http://{address}" for address in server.cfg.bind)
    server.log.error_log.addFilter(_ListeningAt(addresses))
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="webhooks-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        _metrics["created"] = directory  # ours: removed again in on_exit
    else:
        # Samples of a previous run's dead processes would be added to this run's.
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def on_exit(server):  # type: ignore[no-untyped-def]
    created = _metrics.get("created")
    if created:
        shutil.rmtree(created, ignore_errors=True)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Answers gunicorn gives itself (a malformed request line or header, 414, 431) in the
    service's JSON error format instead of gunicorn's HTML page."""
    from gunicorn import util

    from webhooks_app.connection import server_error_answer

    def write_error(sock, status_int, reason, mesg):  # type: ignore[no-untyped-def]
        util.write_nonblock(sock, server_error_answer(status_int, reason, mesg))

    util.write_error = write_error


def pre_request(worker, req):  # type: ignore[no-untyped-def]
    # gunicorn drops a Connection header set by the application: this is how the application
    # closes a connection whose request body it left unread (webhooks_app/connection.py).
    from webhooks_app.connection import offer_close

    offer_close(req.body, req.force_close)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
