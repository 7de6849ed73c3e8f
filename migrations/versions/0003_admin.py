"""admin page: replay runs, audit log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDocument = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
Timestamp = sa.DateTime(timezone=True)
SUCCEEDED = sa.text("status = 'succeeded'")


def upgrade() -> None:
    # A replay starts a new run of a handler; one success is allowed per run, not per event.
    with op.batch_alter_table("event_handlers") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), server_default="1", nullable=False))
    op.drop_index("uq_handler_attempts_one_success", table_name="handler_attempts")
    with op.batch_alter_table("handler_attempts") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), server_default="1", nullable=False))
    op.create_index(
        "uq_handler_attempts_one_success",
        "handler_attempts",
        ["event_id", "handler", "run"],
        unique=True,
        postgresql_where=SUCCEEDED,
    )

    op.create_table(
        "audit_log",
        sa.Column(
            "id", sa.BigInteger(), autoincrement=True, nullable=False
        ),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("details", JSONDocument, nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at_id", "audit_log", ["at", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("uq_handler_attempts_one_success", table_name="handler_attempts")
    with op.batch_alter_table("handler_attempts") as batch:
        batch.drop_column("run")
    op.create_index(
        "uq_handler_attempts_one_success",
        "handler_attempts",
        ["event_id", "handler"],
        unique=True,
        postgresql_where=SUCCEEDED,
    )
    with op.batch_alter_table("event_handlers") as batch:
        batch.drop_column("run")
