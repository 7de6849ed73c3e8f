"""The OpenAPI document of every HTTP endpoint of the service, served at /api/openapi.json."""

from __future__ import annotations

from typing import Any

from webhooks_app.store import EventStatus

ERROR_TYPES = [
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "rate_limit_error",
    "api_error",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


EVENT_ID = {
    "name": "event_id",
    "in": "path",
    "required": True,
    "description": "The webhook-id.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
AUTH_ERRORS = {
    "401": _error("No valid bearer token or admin session."),
    "404": _error("Not found, or the API is disabled (no ADMIN_API_TOKEN, no admin login)."),
}
NULLABLE_STRING = {"type": "string", "nullable": True}
NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message", "param", "code"],
                "properties": {
                    "type": {"type": "string", "enum": ERROR_TYPES},
                    "message": {"type": "string"},
                    "param": NULLABLE_STRING,
                    "code": {"type": "string"},
                },
            }
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "object", "type", "status", "received_at", "payload", "masked_fields"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["event"]},
            "type": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in EventStatus]},
            "received_at": {"type": "string", "format": "date-time"},
            "data_id": NULLABLE_STRING,
            "differing_duplicates": {
                "type": "integer",
                "description": "Deliveries of this id whose body differed (not stored).",
            },
            "payload": {"type": "object", "description": 'Masked fields read "[masked]".'},
            "masked_fields": {
                "type": "array",
                "items": {"type": "string"},
                "description": "JSON Pointers of the masked payload fields.",
            },
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["handler", "attempt", "run", "status", "started_at"],
        "properties": {
            "handler": {"type": "string"},
            "attempt": {"type": "integer", "description": "Per handler, across runs."},
            "run": {"type": "integer", "description": "1, then one more per replay."},
            "status": {"type": "string", "enum": ["running", "succeeded", "failed", "abandoned"]},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": NULLABLE_TIME,
            "duration_ms": {"type": "number", "nullable": True},
            "error": NULLABLE_STRING,
            "traceback": NULLABLE_STRING,
        },
    },
    "EventDetail": {
        "allOf": [
            _ref("Event"),
            {
                "type": "object",
                "required": ["attempts", "headers"],
                "properties": {
                    "attempts": {"type": "array", "items": _ref("Attempt")},
                    "headers": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Delivery headers; signatures truncated.",
                    },
                },
            },
        ]
    },
    "EventList": {
        "type": "object",
        "required": ["object", "data", "has_more", "next_cursor"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Event")},
            "has_more": {"type": "boolean"},
            "next_cursor": NULLABLE_STRING,
        },
    },
    "Stats": {
        "type": "object",
        "required": ["object", "counts", "count_cap", "capped", "estimated_total"],
        "properties": {
            "object": {"type": "string", "enum": ["stats"]},
            "counts": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Events per status, each counted up to count_cap.",
            },
            "count_cap": {"type": "integer"},
            "capped": {"type": "array", "items": {"type": "string"}},
            "estimated_total": {"type": "integer", "nullable": True},
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "object", "at", "actor", "action", "target", "details"],
        "properties": {
            "id": {"type": "integer"},
            "object": {"type": "string", "enum": ["audit_entry"]},
            "at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": NULLABLE_STRING,
            "details": {"type": "object"},
            "remote_addr": NULLABLE_STRING,
        },
    },
    "BulkReplay": {
        "type": "object",
        "required": ["object", "dry_run", "replayed", "skipped", "limit"],
        "properties": {
            "object": {"type": "string", "enum": ["bulk_replay"]},
            "dry_run": {"type": "boolean"},
            "replayed": {"type": "array", "items": {"type": "string"}},
            "skipped": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Event id: why it was not replayed.",
            },
            "limit": {"type": "integer"},
        },
    },
    "AuditList": {
        "type": "object",
        "required": ["object", "data", "has_more", "next_cursor"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("AuditEntry")},
            "has_more": {"type": "boolean"},
            "next_cursor": NULLABLE_STRING,
        },
    },
}

# One parser reads every time bound (params.moment): a day, a moment or Unix seconds.
TIME_PARAM = {
    "type": "string",
    "description": "YYYY-MM-DD (a whole day), ISO 8601 (UTC without an offset) or Unix seconds",
}
DAY_PARAM = TIME_PARAM

PATHS: dict[str, Any] = {
    "/webhooks/events": {
        "post": {
            "operationId": "receiveEvent",
            "summary": "Receive one webhook delivery (Standard Webhooks signature).",
            "tags": ["webhooks"],
            "security": [],
            "parameters": [
                {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["event", "data"],
                            "properties": {"event": {"type": "string"}, "data": {"type": "object"}},
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["id", "status"],
                        "properties": {
                            "id": {"type": "string"},
                            "status": {"type": "string", "enum": ["accepted", "duplicate"]},
                        },
                    },
                    "Stored (or stored before).",
                ),
                "400": _error("Not a valid event envelope."),
                "401": _error("Signature missing, wrong, or outside the time tolerance."),
                "413": _error("Body larger than MAX_BODY_BYTES."),
                "415": _error("Not application/json."),
                "503": _error("The database is unreachable; nothing was stored."),
            },
        }
    },
    "/webhooks/verify": {
        "get": {
            "operationId": "verifyChallenge",
            "summary": "Echo the provider's verification challenge.",
            "tags": ["webhooks"],
            "security": [],
            "parameters": [
                {
                    "name": "challenge",
                    "in": "query",
                    "required": True,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 512,
                        "pattern": "^[ -~]+$",
                    },
                }
            ],
            "responses": {
                "200": {
                    "description": "The challenge, as text or JSON.",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"challenge": {"type": "string"}},
                            }
                        },
                    },
                },
                "400": _error("Empty, too long or non-printable challenge."),
            },
        }
    },
    "/": {
        "get": {
            "operationId": "home",
            "summary": "The admin page when it is on (302), else a page naming the endpoints.",
            "tags": ["health"],
            "security": [],
            "responses": {
                "200": {
                    "description": "A short HTML page naming the endpoints.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "302": {"description": "To the admin page."},
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness.",
            "tags": ["health"],
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The process is up.")},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: database and broker reachable.",
            "tags": ["health"],
            "security": [],
            "responses": {
                "200": _json({"type": "object"}, "Ready."),
                "503": _json({"type": "object"}, "The database or the broker is unreachable."),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics of the web processes (text exposition format).",
            "tags": ["health"],
            "security": [{"metricsToken": []}],
            "responses": {
                "200": {
                    "description": "Metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _error("No valid bearer token (METRICS_TOKEN)."),
                "404": _error("Metrics are disabled (no METRICS_TOKEN)."),
            },
        }
    },
    "/api/events": {
        "get": {
            "operationId": "listEvents",
            "summary": "Stored events, newest first (keyset pagination).",
            "tags": ["events"],
            "parameters": [
                _query("type", "Event type.", {"type": "string"}),
                _query(
                    "status",
                    "Event status.",
                    {"type": "string", "enum": [s.value for s in EventStatus]},
                ),
                _query("since", "Received at or after.", TIME_PARAM),
                _query("until", "Received before (a day: up to its end).", TIME_PARAM),
                _query("data_id", "The event's data.id.", {"type": "string"}),
                _query("q", "An event id or a data.id.", {"type": "string"}),
                _query("limit", "1 to 200.", {"type": "integer", "minimum": 1, "maximum": 200}),
                _query("cursor", "next_cursor of the previous page.", {"type": "string"}),
            ],
            "responses": {
                "200": _json(_ref("EventList"), "A page of events."),
                "400": _error("A bad parameter."),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/events/{event_id}": {
        "parameters": [EVENT_ID],
        "get": {
            "operationId": "getEvent",
            "summary": "One event with its handler attempts.",
            "tags": ["events"],
            "responses": {"200": _json(_ref("EventDetail"), "The event."), **AUTH_ERRORS},
        },
        "delete": {
            "operationId": "deleteEvent",
            "summary": "Delete an event and its history for good (audited).",
            "tags": ["events"],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["id", "object", "deleted"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"type": "string", "enum": ["event"]},
                            "deleted": {"type": "boolean", "enum": [True]},
                        },
                    },
                    "Deleted.",
                ),
                "403": _error("Session call without the CSRF token."),
                **AUTH_ERRORS,
            },
        },
    },
    "/api/events/{event_id}/replay": {
        "parameters": [EVENT_ID],
        "post": {
            "operationId": "replayEvent",
            "summary": "Run an event's failed handlers (or all, or one) again, as new attempts.",
            "tags": ["events"],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "handlers": {
                                    "type": "string",
                                    "enum": ["failed", "all"],
                                    "default": "failed",
                                    "description": (
                                        "Which handlers: those whose last run failed or "
                                        "died (the default: a handler that succeeded is not "
                                        "run again), or all of the event's handlers. "
                                        "Ignored when handler is given."
                                    ),
                                },
                                "handler": {
                                    "type": "string",
                                    "description": "Only this handler, whatever its status.",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "required": ["id", "object", "handlers", "status"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"type": "string", "enum": ["event.replay"]},
                            "handlers": {"type": "array", "items": {"type": "string"}},
                            "status": {"type": "string", "enum": ["received"]},
                        },
                    },
                    "Queued.",
                ),
                "400": _error(
                    "Unknown handler, a handlers value other than failed or all, or a body "
                    "that is not a JSON object."
                ),
                "403": _error("Session call without the CSRF token."),
                "409": _error(
                    "A chosen handler is running, the type has no handler, or (handlers: "
                    "failed) no handler has failed."
                ),
                **AUTH_ERRORS,
            },
        },
    },
    "/api/replay": {
        "post": {
            "operationId": "bulkReplay",
            "summary": "Replay the failed and dead events a filter selects (audited).",
            "description": "The filter is the event list's, as body fields; at most"
            " `limit` events, newest first; run it again for more.",
            "tags": ["events"],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "type": {"type": "string"},
                                "status": {"type": "string", "enum": ["failed", "dead"]},
                                "since": TIME_PARAM,
                                "until": TIME_PARAM,
                                "data_id": {"type": "string"},
                                "q": {"type": "string"},
                                "dry_run": {
                                    "type": "boolean",
                                    "description": "Only list the ids it would replay.",
                                },
                                "handlers": {
                                    "type": "string",
                                    "enum": ["failed", "all"],
                                    "default": "failed",
                                    "description": "Each event's failed handlers, or all.",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(_ref("BulkReplay"), "dry_run: what would be replayed."),
                "202": _json(_ref("BulkReplay"), "Queued."),
                "400": _error("A bad filter, or a body that is not a JSON object."),
                "403": _error("Session call without the CSRF token."),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/events/{event_id}/reveal": {
        "parameters": [EVENT_ID],
        "post": {
            "operationId": "revealField",
            "summary": "The unmasked value of one masked payload field (audited).",
            "tags": ["events"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["field"],
                            "properties": {
                                "field": {"type": "string", "description": "A JSON Pointer."}
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["id", "field", "value"],
                        "properties": {
                            "id": {"type": "string"},
                            "field": {"type": "string"},
                            "value": {},
                        },
                    },
                    "The value.",
                ),
                "400": _error("Not one of the event's masked fields."),
                "403": _error("Session call without the CSRF token."),
                **AUTH_ERRORS,
            },
        },
    },
    "/api/stats": {
        "get": {
            "operationId": "stats",
            "summary": "Events per status (bounded counts) and an estimated total.",
            "tags": ["events"],
            "responses": {"200": _json(_ref("Stats"), "The counts."), **AUTH_ERRORS},
        }
    },
    "/api/audit": {
        "get": {
            "operationId": "listAudit",
            "summary": "The audit log of admin actions, newest first.",
            "tags": ["audit"],
            "parameters": [
                _query("start", "From this day (inclusive).", DAY_PARAM),
                _query("end", "To this day (inclusive).", DAY_PARAM),
                _query("limit", "1 to 500.", {"type": "integer", "minimum": 1, "maximum": 500}),
                _query("cursor", "next_cursor of the previous page.", {"type": "string"}),
            ],
            "responses": {
                "200": _json(_ref("AuditList"), "A page of entries."),
                "400": _error("A bad parameter."),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "tags": ["meta"],
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }
    },
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Assisters Webhooks",
            "version": "0.1.0",
            "description": "Receives, stores and processes Assisters AI API webhook events. "
            "Errors use the provider's format "
            '{"error": {"type", "message", "param", "code"}}.',
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ADMIN_API_TOKEN",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "METRICS_TOKEN",
                },
                "adminSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "aw_session",
                    "description": "A logged-in admin page session; state-changing"
                    " calls also need the X-CSRFToken header.",
                },
            },
        },
        "security": [{"bearerAuth": []}, {"adminSession": []}],
    }
