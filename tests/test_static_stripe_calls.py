"""R2, statically: one module talks to Stripe, and every `create` it sends carries our idempotency key.

An `ast` scan of the project's own code (not .venv, tests or migrations):
- only `billing/gateways/stripe.py` imports the `stripe` SDK (in any form);
- in it, every `.create(...)` passes `options={"idempotency_key": _require_key(...)}`, so the key
  is always given, checked non-empty at run time, and visible to a reader at the call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = Path("billing/gateways/stripe.py")
EXCLUDED_PARTS = {".venv", "venv", "tests", "migrations", "node_modules", "var", ".git"}
CREATE_METHODS = {"create", "create_async"}


def project_files() -> list[Path]:
    return sorted(
        path.relative_to(ROOT)
        for path in ROOT.rglob("*.py")
        if not EXCLUDED_PARTS.intersection(path.relative_to(ROOT).parts)
    )


def _is_sdk(module: str | None) -> bool:
    return module is not None and (module == "stripe" or module.startswith("stripe."))


def _imported_modules(node: ast.AST) -> list[str]:
    """Absolute module names `node` imports: import/from statements, __import__ and import_module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module] if node.level == 0 and node.module else []  # relative: our own modules
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        dynamic = (isinstance(node.func, ast.Name) and node.func.id == "__import__") or (
            isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
        )
        return [node.args[0].value] if dynamic and isinstance(node.args[0].value, str) else []
    return []


def stripe_imports(source: str, filename: str) -> list[str]:
    """`file:line` of every import of the stripe SDK."""
    return [
        f"{filename}:{node.lineno}"
        for node in ast.walk(ast.parse(source, filename=filename))
        if any(_is_sdk(module) for module in _imported_modules(node))
    ]


def _passes_checked_key(call: ast.Call) -> bool:
    options = next((kw.value for kw in call.keywords if kw.arg == "options"), None)
    if not isinstance(options, ast.Dict):
        return False
    for key, value in zip(options.keys, options.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "idempotency_key":
            return (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id == "_require_key"
                and len(value.args) == 1
            )
    return False


def create_calls(source: str, filename: str) -> tuple[int, list[str]]:
    """(number of `.create(` calls, `file:line` of those without a checked idempotency key)."""
    calls = [
        node
        for node in ast.walk(ast.parse(source, filename=filename))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CREATE_METHODS
    ]
    return len(calls), [f"{filename}:{call.lineno}" for call in calls if not _passes_checked_key(call)]


def test_only_the_gateway_imports_the_stripe_sdk():
    files = project_files()
    assert GATEWAY in files and Path("billing/models/payments.py") in files  # the scan sees the project

    importers = {
        path for path in files if stripe_imports((ROOT / path).read_text(encoding="utf-8"), str(path))
    }

    assert importers == {GATEWAY}, f"Only {GATEWAY} may import stripe; found {sorted(map(str, importers))}"


def test_every_stripe_create_passes_an_idempotency_key():
    count, offenders = create_calls((ROOT / GATEWAY).read_text(encoding="utf-8"), str(GATEWAY))

    assert count >= 4  # customers, setup_intents, payment_intents, refunds: the scan is not vacuous
    assert not offenders, (
        "Stripe create calls without options={'idempotency_key': _require_key(...)}: " + ", ".join(offenders)
    )


# -- the scanner itself catches what it should --------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        "import stripe\n",
        "import stripe.error as e\n",
        "from stripe import PaymentIntent\n",
        "from stripe._error import CardError\n",
        "import os, stripe\n",
        "sdk = __import__('stripe')\n",
        "import importlib\nsdk = importlib.import_module('stripe')\n",
    ],
)
def test_scanner_finds_each_form_of_stripe_import(source):
    assert stripe_imports(source, "billing/services/x.py")


@pytest.mark.parametrize(
    "source",
    [
        "from billing.gateways import stripe\n",
        "from billing.gateways.stripe import payment_intent_create\n",
        "from . import stripe\n",
        "import stripelike\n",
    ],
)
def test_scanner_accepts_our_own_gateway_imports(source):
    assert stripe_imports(source, "billing/services/x.py") == []


@pytest.mark.parametrize(
    "source",
    [
        "c.v1.payment_intents.create(params)\n",
        "c.v1.payment_intents.create(params, {'idempotency_key': _require_key(k)})\n",  # positional: not seen
        "c.v1.refunds.create(params, options={})\n",
        "c.v1.refunds.create(params, options={'idempotency_key': None})\n",
        "c.v1.refunds.create(params, options={'idempotency_key': key})\n",  # unchecked
        "c.v1.refunds.create(params, options=opts)\n",
        "stripe.PaymentIntent.create(amount=1, idempotency_key=k)\n",  # the global API: not our form
        "await c.v1.customers.create_async(params)\n",
    ],
)
def test_scanner_flags_creates_without_a_checked_key(source):
    count, offenders = create_calls(source, "billing/gateways/stripe.py")
    assert count == 1
    assert offenders == ["billing/gateways/stripe.py:1"]


def test_scanner_accepts_the_gateway_form():
    source = "c.v1.customers.create(params, options={'idempotency_key': _require_key(idempotency_key)})\n"
    assert create_calls(source, "billing/gateways/stripe.py") == (1, [])
