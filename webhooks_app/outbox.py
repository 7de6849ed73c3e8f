"""The outbox relay process: ``python -m webhooks_app.outbox [WAKEUP_FD]``.

gunicorn's master starts it (``gunicorn.conf.py``) and hands it the read end of a pipe whose
write end every web worker inherits: a worker that committed an event writes one byte, the
relay wakes up and hands every ``received`` event to the broker in batches (see
``handoff.OutboxRelay``). It also looks every ``RELAY_POLL_SECONDS`` without a wake-up, and
stops when its parent goes away.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from functools import partial
from types import FrameType

from webhooks_app import create_app
from webhooks_app.database import Plans, make_engine, pipelined_transaction
from webhooks_app.handoff import OutboxRelay
from webhooks_app.service import Service

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    wakeup_fd = int(args[0]) if args else None
    if wakeup_fd is not None:
        os.set_blocking(wakeup_fd, False)
    os.environ.pop("WEBHOOKS_RELAY_WAKEUP_FD", None)  # that is the web workers' end
    app = create_app()
    service: Service = app.extensions["webhooks"]
    # On PostgreSQL, its own connection, in pipelined transactions, without a pre-ping round
    # trip on every cycle: a cycle that meets a dead connection fails, and the next one gets a
    # fresh connection. Its one statement is best served by a generic plan (see
    # database.Plans).
    engine = (
        None
        if service.settings.database_url.startswith("sqlite")
        else make_engine(
            service.settings,
            pool_size=1,
            isolation_level="AUTOCOMMIT",
            pre_ping=False,
            plans=Plans.SERVER_CHOOSES,
        )
    )
    relay = OutboxRelay(
        service.db.sessions,
        service.publish,
        service.settings,
        pipelined=None if engine is None else partial(pipelined_transaction, engine),
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        relay.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("outbox relay started")
    with app.app_context():
        relay.serve(wakeup_fd, parent_pid=os.getppid())
    if engine is not None:
        engine.dispose()
    service.db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
