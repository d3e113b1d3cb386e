"""R28: no floats in money code. A static scan with `ast` of core/money.py, core/rounding.py and billing/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONEY_FILES = [ROOT / "core" / "money.py", ROOT / "core" / "rounding.py"]


def money_code_files() -> list[Path]:
    billing = sorted(
        p for p in (ROOT / "billing").rglob("*.py") if "migrations" not in p.relative_to(ROOT).parts
    )
    return MONEY_FILES + billing


def float_offenders(source: str, filename: str) -> list[str]:
    """`file:line: reason` for every float( call, float literal and FloatField use in `source`."""
    offenders = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        reason = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float":
            reason = "float() call"
        elif isinstance(node, ast.Constant) and isinstance(node.value, float | complex):
            reason = f"float literal {node.value!r}"
        elif (isinstance(node, ast.Name) and node.id == "FloatField") or (
            isinstance(node, ast.Attribute) and node.attr == "FloatField"
        ):
            reason = "FloatField"
        elif isinstance(node, ast.alias) and node.name.rsplit(".", 1)[-1] == "FloatField":
            reason = "FloatField import"
        if reason:
            offenders.append(f"{filename}:{getattr(node, 'lineno', '?')}: {reason}")
    return offenders


def test_money_code_has_no_floats():
    files = money_code_files()
    assert all(path.exists() for path in MONEY_FILES)
    offenders = [
        offence
        for path in files
        for offence in float_offenders(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert not offenders, "Floats in money code (use int minor units / Decimal / Fraction):\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("x = float(amount)\n", "float() call"),
        ("x = amount * 1.19\n", "float literal 1.19"),
        ("x = 1e3\n", "float literal 1000.0"),
        ("price = models.FloatField()\n", "FloatField"),
        ("from django.db.models import FloatField\n", "FloatField import"),
    ],
)
def test_scanner_catches_each_kind_of_float(source, reason):
    assert float_offenders(source, "billing/example.py") == [f"billing/example.py:1: {reason}"]


def test_scanner_reports_file_and_line():
    source = "from decimal import Decimal\n\n\ndef vat(net):\n    return net * 0.2\n"
    assert float_offenders(source, "billing/services/vat.py") == [
        "billing/services/vat.py:5: float literal 0.2"
    ]


def test_scanner_accepts_integer_and_decimal_code():
    source = (
        "from decimal import Decimal\nfrom django.db import models\n"
        "amount_minor = models.BigIntegerField()\nrate = Decimal('0.19')\nhalf = 999 // 2\n"
    )
    assert float_offenders(source, "billing/ok.py") == []
