"""The events app's services: `event_record` is the one entry point other apps call."""

from events.services.outbox import event_record

__all__ = ["event_record"]
