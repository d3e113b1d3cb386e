"""Audit history: the request context of every event, and its display per object in admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.html import format_html, format_html_join
from pghistory.middleware import HistoryMiddleware

HISTORY_ROWS = 50
_SKIPPED = {"pgh_id", "pgh_created_at", "pgh_label", "pgh_obj", "pgh_context", "pgh_obj_id", "pgh_context_id"}


def audit_enabled() -> bool:
    """Triggers exist on PostgreSQL only: the SQLite demo runs without history."""
    return connection.vendor == "postgresql"


class AuditContextMiddleware(HistoryMiddleware):
    """pghistory's context (user, URL) plus our request id (core.logging.RequestIdMiddleware).
    A pass-through where the database cannot take it (SQLite)."""

    def get_context(self, request) -> dict[str, Any]:
        return {**super().get_context(request), "request_id": getattr(request, "request_id", "")}

    def __call__(self, request):
        if not audit_enabled():
            return self.get_response(request)
        return super().__call__(request)


def _value(event, field) -> str:
    value = getattr(event, field.attname)
    return "—" if value is None else str(value)


@admin.display(description="Audit history")
def audit_history(model_admin, obj) -> str:
    """Every recorded change of this row, newest first: when, what, who, from where, which fields
    changed. Two queries (the events with their context, the users named in them)."""
    from reports.models import EVENT_MODELS

    if obj is None or obj.pk is None:
        return "—"
    if not audit_enabled():
        return (
            "Audit history is off: this database (SQLite, the demo) cannot run its triggers. Use PostgreSQL."
        )
    event_model = EVENT_MODELS[type(obj)]
    events = list(
        event_model.objects.filter(pgh_obj_id=obj.pk).select_related("pgh_context").order_by("pgh_id")
    )[-HISTORY_ROWS:]
    fields = [f for f in event_model._meta.concrete_fields if f.name not in _SKIPPED]
    user_ids = {e.pgh_context.metadata.get("user") for e in events if e.pgh_context} - {None}
    users: dict[Any, str] = dict(
        get_user_model().objects.filter(pk__in=user_ids).values_list("pk", "username")
    )
    rows, previous = [], None
    for event in events:
        context = event.pgh_context.metadata if event.pgh_context else {}
        changed = [
            f"{f.name}: {_value(previous, f)} → {_value(event, f)}"
            for f in fields
            if previous is not None and _value(previous, f) != _value(event, f)
        ]
        rows.append(
            (
                f"{event.pgh_created_at:%Y-%m-%d %H:%M:%S}",
                event.pgh_label,
                users.get(context.get("user"), "system" if not context else "—"),
                context.get("url", "—") or "—",
                context.get("request_id", "") or "—",
                "; ".join(changed)
                if previous is not None
                else "created"
                if event.pgh_label == "insert"
                else "",
            )
        )
        previous = event
    if not rows:
        return "No change recorded."
    head = format_html_join(
        "", "<th>{}</th>", ((h,) for h in ("When (UTC)", "Event", "Who", "URL", "Request id", "Changes"))
    )
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in reversed(rows)),
    )
    return format_html(
        '<table class="audit-history"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body
    )


def add_audit_history_to_admin() -> None:
    """Show the audit history on the change page of every tracked model's admin."""
    from reports.models import EVENT_MODELS

    for model in EVENT_MODELS:
        model_admin = admin.site._registry.get(model)
        if model_admin is not None:
            _extend(type(model_admin))


def _extend(admin_class) -> None:
    if getattr(admin_class, "_audit_history_added", False):
        return
    admin_class._audit_history_added = True
    admin_class.audit_history = audit_history
    get_readonly_fields, get_fieldsets = admin_class.get_readonly_fields, admin_class.get_fieldsets

    def readonly_fields(self, request, obj=None):
        fields = tuple(get_readonly_fields(self, request, obj))
        return (*fields, "audit_history") if obj is not None else fields

    def fieldsets(self, request, obj=None):
        sets = [
            (name, {**options, "fields": [f for f in options["fields"] if f != "audit_history"]})
            for name, options in get_fieldsets(self, request, obj)
        ]
        if obj is not None:
            sets.append(("Audit history", {"fields": ["audit_history"]}))
        return sets

    admin_class.get_readonly_fields = readonly_fields
    admin_class.get_fieldsets = fieldsets
