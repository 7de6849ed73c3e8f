"""The database handle: errors never list the values bound to a statement (they get logged).

The server's own message may still quote the value it refused; the others stay out."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from webhooks_app.service import Service

SECRET = "whsec_value_that_must_not_be_logged"


def test_a_session_error_hides_its_parameters(service: Service) -> None:
    with pytest.raises(sa_exc.DataError) as raised, service.db.transaction() as session:
        session.execute(text("SELECT CAST(:bad AS integer), :v"), {"bad": "x", "v": SECRET})
    assert SECRET not in str(raised.value)


def test_an_autocommit_error_is_sqlalchemys_and_hides_its_parameters(service: Service) -> None:
    with pytest.raises(sa_exc.DataError) as raised:
        service.db.execute_autocommit(
            "SELECT CAST(%(bad)s AS integer), %(v)s::text", {"bad": "x", "v": SECRET}
        )
    assert SECRET not in str(raised.value)
