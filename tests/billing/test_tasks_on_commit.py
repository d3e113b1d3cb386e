"""R13: billing tasks are published on commit, never from inside a transaction that may roll back.

Statically: no bare `.delay()` / `.apply_async()` inside an `atomic()` block (a `with` block or a
function decorated with it) anywhere in billing; a call in a callback handed to `on_commit`
(a lambda or a nested function) is what the rule asks for, and allowed. Behaviourally: the renewal
fan-out in a rolled-back transaction publishes nothing, in a committed one each chunk once.
"""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from benchmarks.renewals import renewal_fleet_seed
from billing import tasks
from billing.services.renewals import SweepReport

ROOT = Path(__file__).resolve().parents[2]
PUBLISH = {"delay", "apply_async"}


def _is_atomic(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Attribute) and target.attr == "atomic") or (
        isinstance(target, ast.Name) and target.id == "atomic"
    )


def _publishes(body: list[ast.stmt]) -> list[ast.Call]:
    """Calls of `.delay`/`.apply_async` in `body`, not descending into lambdas or nested functions."""
    found, stack = [], list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PUBLISH:
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def publishes_inside_atomic(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename)
    hits = []
    for node in ast.walk(tree):
        in_with = isinstance(node, ast.With | ast.AsyncWith) and any(
            _is_atomic(item.context_expr) for item in node.items
        )
        decorated = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            _is_atomic(decorator) for decorator in node.decorator_list
        )
        if in_with or decorated:
            hits += _publishes(node.body)
    return sorted({f"{filename}:{call.lineno}" for call in hits})


def test_the_lint_finds_a_bare_delay_inside_atomic_and_allows_on_commit():
    bad = """
from django.db import transaction
def a():
    with transaction.atomic():
        renew.delay(1)
@transaction.atomic
def b():
    if x:
        renew.apply_async(args=[1])
"""
    good = """
from django.db import transaction
def c():
    with transaction.atomic():
        transaction.on_commit(lambda: renew.delay(1))
        renew.delay_on_commit(1)
        def later():
            renew.delay(2)
        transaction.on_commit(later)
    renew.delay(3)
"""
    assert publishes_inside_atomic(bad, "bad.py") == ["bad.py:5", "bad.py:9"]
    assert publishes_inside_atomic(good, "good.py") == []


def test_no_billing_task_is_published_inside_an_atomic_block():
    offenders = [
        hit
        for path in sorted((ROOT / "billing").rglob("*.py"))
        if "migrations" not in path.parts
        for hit in publishes_inside_atomic(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert offenders == []


@pytest.fixture
def published(monkeypatch) -> list:
    sent: list = []
    monkeypatch.setattr(tasks.renew_subscriptions_chunk, "delay", lambda ids: sent.append(ids))
    monkeypatch.setattr(tasks, "stranded_renewal_invoices_charge", lambda **kwargs: SweepReport())
    return sent


def _due(count: int):
    return renewal_fleet_seed(subscriptions=count, period_end=timezone.now() - dt.timedelta(minutes=1))


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_fan_out_publishes_nothing_a_committed_one_each_chunk_once(published):
    _due(3)
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.renew_due_subscriptions.run()
        raise RuntimeError("the transaction rolls back")
    assert published == []

    fleet = _due(2)  # (the first three were handed out: the hint holds them back for a while)
    with transaction.atomic():
        tasks.renew_due_subscriptions.run()
        assert published == []  # not before the commit
    assert [sorted(chunk) for chunk in published] == [sorted(str(pk) for pk in fleet.subscription_ids)]
