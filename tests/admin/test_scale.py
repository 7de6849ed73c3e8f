"""The page's queries stay index-bound on a large table: checked on PostgreSQL's query plans
(no timing), with 200,000 generated events, for every query a page view or poll makes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from webhooks_app import store
from webhooks_app.service import Service
from webhooks_app.store import EventFilter, utcnow

ROWS = 200_000


@pytest.fixture
def big_table(service: Service) -> Service:
    with service.db.engine.connect() as connection:
        connection.execute(
            text(
                """
                INSERT INTO events (id, type, status, payload, raw_body, headers, data_id,
                                    webhook_timestamp, received_at, updated_at)
                SELECT 'evt_' || g,
                       (ARRAY['chat.completion', 'model.failed', 'embedding.created'])[1 + g % 3],
                       CASE WHEN g % 50 = 0 THEN 'dead' WHEN g % 51 = 0 THEN 'failed'
                            ELSE 'succeeded' END,
                       jsonb_build_object('event', 'chat.completion',
                                          'data', jsonb_build_object('id', 'chat_' || g)),
                       '\\x7b7d'::bytea, '{}'::jsonb, 'chat_' || g, 0,
                       now() - g * interval '1 second', now()
                FROM generate_series(1, :rows) AS g
                """
            ),
            {"rows": ROWS},
        )
        connection.commit()
    with service.db.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE events")
        )
    return service


@contextmanager
def plans(service: Service, explain: str = "EXPLAIN") -> Iterator[list[str]]:
    """``explain`` of every SELECT on events run inside the block."""
    statements: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "events" in statement:
            statements.append((statement, parameters))

    found: list[str] = []
    event.listen(service.db.engine, "before_cursor_execute", grab)
    try:
        yield found
    finally:
        event.remove(service.db.engine, "before_cursor_execute", grab)
    with service.db.engine.connect() as connection:
        for statement, parameters in statements:
            rows = connection.exec_driver_sql(f"{explain} {statement}", parameters)
            # FORMAT JSON comes back parsed already; text plans come as lines.
            found.append(
                "\n".join(r[0] if isinstance(r[0], str) else json.dumps(r[0]) for r in rows)
            )


def list_page(service: Service, filters: EventFilter) -> list[str]:
    with plans(service) as found, service.db.transaction() as session:
        page = store.list_events(session, filters, limit=50)
        assert page.events
        with service.db.transaction() as session2:
            store.list_events(session2, filters, limit=50, cursor=page.next_cursor)
    return found


@pytest.mark.parametrize(
    "filters",
    [
        EventFilter(),
        EventFilter(status="dead"),
        EventFilter(type="model.failed"),
        EventFilter(since=utcnow() - timedelta(hours=30), until=utcnow() - timedelta(hours=20)),
        EventFilter(search="chat_123456"),
        EventFilter(search="evt_654"),
    ],
    ids=["newest", "status", "type", "time-range", "search-data-id", "search-event-id"],
)
def test_list_pages_use_an_index(big_table: Service, filters: EventFilter) -> None:
    found = list_page(big_table, filters)
    assert len(found) == 2  # first page and the next, by cursor
    for plan in found:
        assert "Seq Scan" not in plan, plan
        assert "Index" in plan, plan


def scans_of_events(node: dict[str, Any]) -> list[int]:
    """For each scan of events in the plan, the rows it touched: returned plus filtered away."""
    found = []
    if node.get("Relation Name") == "events":
        found.append(
            node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
        )
    for child in node.get("Plans", []):
        found.extend(scans_of_events(child))
    return found


def test_status_counts_read_a_bounded_number_of_rows(big_table: Service) -> None:
    explain = "EXPLAIN (ANALYZE, FORMAT JSON)"
    with plans(big_table, explain) as found, big_table.db.transaction() as session:
        counts = store.bounded_status_counts(session)
    assert counts["succeeded"] == store.STATUS_COUNT_CAP  # shown as "10,000+"
    assert counts["dead"] == ROWS // 50
    assert counts["received"] == 0
    (plan,) = found  # one statement: one snapshot for all the counts
    scans = scans_of_events(json.loads(plan)[0]["Plan"])
    assert len(scans) == len(counts)
    # Whatever the planner picks (an index range, or a scan that stops early on a status most
    # rows have), each count touches about `cap` rows, never the whole table.
    assert max(scans) <= 2 * store.STATUS_COUNT_CAP, plan
    with big_table.db.transaction() as session:
        estimate = store.estimated_event_total(session)
    assert estimate is not None
    assert estimate > ROWS // 2
