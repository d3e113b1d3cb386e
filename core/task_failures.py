"""The dead letter of Celery tasks (`TaskFailure`), and the task base class that fills it.

A billing task retries on any error a few times with a bounded, jittered countdown; when its last
try fails, `on_failure` records the call here. A task whose worker dies under it is redelivered
(`acks_late` + `reject_on_worker_lost`): a message that kills its worker every time would loop
for ever, so each delivery is counted in Redis and past `MAX_REDELIVERIES` the call is recorded
here instead of run. An operator retries a row from the admin (`task_failure_retry`).
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import structlog
from celery import current_app
from celery.contrib.django.task import DjangoTask
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.models import TaskFailure
from core.redis import redis_client, redis_key

log = structlog.get_logger(__name__)
MAX_REDELIVERIES = 3  # deliveries of one try after the first (worker lost) before dead-lettering
MAX_TRIES = 5  # tries of a task that raises (the first + 4 retries)
RETRY_BACKOFF_MAX_SECONDS = 300  # the longest countdown of a retry: below the broker's visibility timeout


def _fingerprint(task_name: str, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None) -> str:
    payload = json.dumps([task_name, list(args or ()), dict(kwargs or {})], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def task_failure_record(
    *,
    task_name: str,
    task_id: str | None,
    args: Iterable[Any] | None,
    kwargs: Mapping[str, Any] | None,
    error: str,
    tries: int = 1,
    at: datetime | None = None,
) -> TaskFailure:
    """Dead-letter a call, or count `tries` more failures on its open row. Own transaction."""
    at = at or timezone.now()
    fingerprint = _fingerprint(task_name, args, kwargs)
    for _ in range(2):
        with transaction.atomic():
            updated = TaskFailure.objects.filter(fingerprint=fingerprint, retried_at__isnull=True).update(
                attempts=F("attempts") + tries, last_failed_at=at, error=error, task_id=task_id or ""
            )
            if not updated:
                try:
                    with transaction.atomic():
                        return TaskFailure.objects.create(
                            task_name=task_name,
                            task_id=task_id or "",
                            fingerprint=fingerprint,
                            args=json.loads(json.dumps(list(args or ()), default=str)),
                            kwargs=json.loads(json.dumps(dict(kwargs or {}), default=str)),
                            error=error,
                            attempts=tries,
                            first_failed_at=at,
                            last_failed_at=at,
                        )
                except IntegrityError:  # recorded concurrently: count on that row
                    continue
            return TaskFailure.objects.get(fingerprint=fingerprint, retried_at__isnull=True)
    raise RuntimeError("could not record the task failure")


def task_failure_retry(*, failure: TaskFailure) -> None:
    """An operator's "retry now": send the call again (after commit) and close the row."""
    with transaction.atomic():
        locked = TaskFailure.objects.select_for_update().get(pk=failure.pk)
        if locked.retried_at is not None:
            return
        locked.retried_at = timezone.now()
        locked.save(update_fields=["retried_at"])
        name, args, kwargs = locked.task_name, locked.args, locked.kwargs
        transaction.on_commit(lambda: current_app.send_task(name, args=args, kwargs=kwargs))


def _delivery_count(task: DjangoTask) -> int:
    """How many times this try of this task was delivered (1 unless a worker died under it)."""
    client = redis_client()
    request = task.request
    if client is None or request.is_eager or not request.id:
        return 1
    key = redis_key(f"task-deliveries:{request.id}:{request.retries or 0}")
    pipe = client.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, 24 * 3600)
    return int(pipe.execute()[0])


class DeadLetterTask(DjangoTask):
    """Base of the billing tasks (a `DjangoTask`: `delay_on_commit`): retried on error with a
    bounded countdown, then dead-lettered; never run again after its worker was lost more than
    `MAX_REDELIVERIES` times under it."""

    autoretry_for = (Exception,)
    max_retries = MAX_TRIES - 1
    retry_backoff = 5
    retry_backoff_max = RETRY_BACKOFF_MAX_SECONDS
    retry_jitter = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        deliveries = _delivery_count(self)
        if deliveries > 1 + MAX_REDELIVERIES:
            log.error("task_dead_lettered_after_redeliveries", task=self.name, deliveries=deliveries)
            task_failure_record(
                task_name=self.name,
                task_id=self.request.id,
                args=args,
                kwargs=kwargs,
                error=f"its worker was lost {deliveries - 1} times while running it (not run again)",
                tries=deliveries - 1,
            )
            return None
        return super().__call__(*args, **kwargs)

    def on_failure(
        self, exc: Exception, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        log.error("task_dead_lettered", task=self.name, task_id=task_id, error=repr(exc))
        try:
            task_failure_record(
                task_name=self.name,
                task_id=task_id,
                args=args,
                kwargs=kwargs,
                error="".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000],
                tries=(self.request.retries or 0) + 1,
            )
        except Exception:  # the database may be why it failed: the log keeps it
            log.exception("task_failure_not_recorded", task=self.name, task_id=task_id)
