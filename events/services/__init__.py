"""The events app's services: `event_record` (one event) and `events_record` (a batch) are the
entry points other apps call."""

from events.services.outbox import EventSpec, event_record, events_record

__all__ = ["EventSpec", "event_record", "events_record"]
