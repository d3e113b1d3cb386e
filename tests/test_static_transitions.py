"""Statuses change only through their model's transition table, statically.

Subscription, Invoice, PaymentAttempt, Refund, Purchase and VehicleTransfer each have a table
beside the model and one `*_transition` function; all of them go through
`core.states.transition_apply`. An `ast` scan of the project's own code (not tests or
migrations) fails on any other assignment to a `status` attribute (`x.status = ...`, also in a
tuple target) and on any queryset `update(status=...)` / `bulk_update(..., ["status"])`, which
would bypass the table.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_static_stripe_calls import ROOT, project_files

ALLOWED = {Path("core/states.py")}  # the one place that writes the attribute, after the table check


def _assigned_attributes(node: ast.AST) -> list[ast.Attribute]:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    flat: list[ast.Attribute] = []
    while targets:
        target = targets.pop()
        if isinstance(target, ast.Tuple | ast.List):
            targets.extend(target.elts)
        elif isinstance(target, ast.Attribute):
            flat.append(target)
    return flat


def _status_writes(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        lines += [a.lineno for a in _assigned_attributes(node) if a.attr == "status"]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "update" and any(k.arg == "status" for k in node.keywords):
                lines.append(node.lineno)
            if node.func.attr == "bulk_update" and "'status'" in ast.unparse(node).replace('"', "'"):
                lines.append(node.lineno)
    return lines


def test_no_status_is_written_outside_the_transition_functions():
    offenders = []
    for path in project_files():
        if path in ALLOWED:
            continue
        tree = ast.parse((ROOT / path).read_text(), filename=str(path))
        offenders += [f"{path}:{line}" for line in _status_writes(tree)]
    assert offenders == [], "write statuses through the model's *_transition function: " + ", ".join(
        offenders
    )


def test_the_scan_catches_each_way_of_writing_a_status():
    source = """
invoice.status = "paid"
subscription.status, subscription.ended_at = "canceled", at
Purchase.objects.filter(pk=1).update(status="failed")
Refund.objects.bulk_update(rows, ["status"])
other.state = "fine"
"""
    assert _status_writes(ast.parse(source)) == [2, 3, 4, 5]


def test_every_stateful_model_has_a_transition_function():
    from billing.services import transitions
    from vehicles.services import transfers

    names = {
        "subscription_transition",
        "invoice_transition",
        "payment_attempt_transition",
        "refund_transition",
        "purchase_transition",
    }
    assert names <= set(dir(transitions))
    assert hasattr(transfers, "vehicle_transfer_transition")
