"""Benchmark of the renewal sweep at fleet scale: renewals/s, queries per renewal, duplicates.

    .venv/bin/python benchmarks/renewals.py [--subscriptions 10000] [--workers 1,2,4]
                                            [--e2e-subscriptions 250] [--rate 25]

1. Creates (if missing) and migrates its own PostgreSQL database (default `billing_bench_renewals`),
   starts localstripe and our proxy in front of it (devtools/stripe_proxy.py), on loopback.
2. For each worker count W: seeds N subscriptions due now (a fresh set per run, inserted in bulk),
   then starts W processes that sweep at the same instant (`subscriptions_renew_due`: batches
   claimed with SKIP LOCKED and held while renewed, then charged), and times them until all exit.
3. Twice: **local**, the proxy answers the PaymentIntents itself (our own work: database, Redis
   rate budget, the SDK and HTTP on loopback; the budget is on but set far above the load), and
   **e2e** against localstripe with the rate budget at `--rate` requests/s (default 25, Stripe's
   test mode) and the proxy answering 429 above the same rate: it must see none.
4. Checks per run: every subscription renewed once (one invoice per period, one succeeded attempt),
   PaymentIntent creates counted at the proxy by idempotency key (duplicates: creates beyond one
   per invoice), no 429.
The last line is machine-readable:
`local_renewals_per_s=<n> e2e_renewals_per_s=<n> queries_per_renewal=<n> duplicate_charges=<n>`
(the best W of each mode; queries per renewal of the local run with the most workers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.entitlements import database_ensure, free_port, redis_reachable  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/billing_bench_renewals"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
VIN_PREFIX = "RN"
SUBSCRIPTIONS_PER_OWNER = 50
PLAN_CODE = "bench_renewal_monthly"
GOAL_LOCAL_RENEWALS_PER_S = 1000
PI_CREATE = "/v1/payment_intents"


def say(message: str) -> None:
    print(message, flush=True)


# --- seeding (also used by the tests) ------------------------------------------------------------


@dataclass(frozen=True)
class SeededFleet:
    subscription_ids: list
    owner_ids: list
    period_end: dt.datetime


def renewal_fleet_seed(
    *,
    subscriptions: int,
    period_end: dt.datetime,
    per_owner: int = SUBSCRIPTIONS_PER_OWNER,
    stripe_accounts=None,
    batch_size: int = 5_000,
) -> SeededFleet:
    """`subscriptions` active monthly subscriptions whose period ends at `period_end`, each on its
    own car, `per_owner` cars per owner, every owner with a default card; inserted in bulk.

    `stripe_accounts(count) -> [(customer_id, payment_method_id)]` gives the owners real Stripe
    customers and cards (end to end); by default they get made-up ids (the proxy answers).
    """
    from django.db import transaction

    from billing.models import Feature, Offer, PaymentMethod, Price, Subscription, SubscriptionStatus
    from vehicles.models import Market, Owner, Ownership, Vehicle

    market, _ = Market.objects.get_or_create(
        code="DE",
        defaults={"name": "Germany", "country": "DE", "currency": "EUR", "withdrawal_period_days": 14},
    )
    feature, _ = Feature.objects.get_or_create(
        code="bench_renewal_feature", defaults={"name": "Renewal bench feature", "category": "comfort"}
    )
    offer, created = Offer.objects.get_or_create(
        code=PLAN_CODE,
        defaults={"name": "Renewal bench plan", "kind": Offer.Kind.SUBSCRIPTION, "interval": "month"},
    )
    if created:
        offer.features.add(feature)
    price, _ = Price.objects.get_or_create(
        offer=offer,
        market=market,
        version=1,
        defaults={"currency": "EUR", "amount_minor": 999, "valid_from": period_end - dt.timedelta(days=3650)},
    )
    start = Vehicle.objects.filter(vin__startswith=VIN_PREFIX).count()
    owners_needed = math.ceil(subscriptions / per_owner)
    accounts = (
        stripe_accounts(owners_needed)
        if stripe_accounts
        else [
            (f"cus_bench_{uuid.uuid4().hex[:16]}", f"pm_bench_{uuid.uuid4().hex[:16]}")
            for _ in range(owners_needed)
        ]
    )
    period_start = period_end - dt.timedelta(days=30)
    with transaction.atomic():
        owners = Owner.objects.bulk_create(
            Owner(
                display_name=f"Renewal bench owner {start + n}",
                email=f"renewals{start + n}-{uuid.uuid4().hex[:6]}@bench.example.com",
                billing_country="DE",
                currency="EUR",
                stripe_customer_id=customer_id,
            )
            for n, (customer_id, _) in enumerate(accounts)
        )
        PaymentMethod.objects.bulk_create(
            PaymentMethod(
                owner=owner, stripe_payment_method_id=card_id, brand="visa", last4="4242", is_default=True
            )
            for owner, (_, card_id) in zip(owners, accounts, strict=True)
        )
    subscription_ids = []
    for first in range(0, subscriptions, batch_size):
        numbers = range(first, min(first + batch_size, subscriptions))
        with transaction.atomic():
            vehicles = Vehicle.objects.bulk_create(
                Vehicle(
                    id=uuid.uuid4(),
                    vin=f"{VIN_PREFIX}{start + n:015d}",
                    brand="Volta",
                    model="E5",
                    model_year=2026,
                    market=market,
                    software_version="2026.40.1",
                    battery_capacity_wh=82_000,
                    delivered_at=period_start - dt.timedelta(days=30),
                )
                for n in numbers
            )
            Ownership.objects.bulk_create(
                Ownership(vehicle=vehicle, owner=owners[n // per_owner], starts_at=vehicle.delivered_at)
                for n, vehicle in zip(numbers, vehicles, strict=True)
            )
            created_subscriptions = Subscription.objects.bulk_create(
                Subscription(
                    id=uuid.uuid4(),
                    owner=owners[n // per_owner],
                    vehicle=vehicle,
                    offer=offer,
                    price=price,
                    status=SubscriptionStatus.ACTIVE,
                    billing_anchor=period_start,
                    current_period_start=period_start,
                    current_period_end=period_end,
                )
                for n, vehicle in zip(numbers, vehicles, strict=True)
            )
            subscription_ids.extend(s.pk for s in created_subscriptions)
    owner_ids = [owner.pk for owner in owners]
    return SeededFleet(subscription_ids=subscription_ids, owner_ids=owner_ids, period_end=period_end)


def localstripe_accounts(count: int) -> list[tuple[str, str]]:
    """`count` customers at Stripe (localstripe), each with a Visa card attached."""
    from billing.gateways import stripe as gateway

    accounts = []
    for _ in range(count):
        tag = uuid.uuid4().hex
        customer = gateway.customer_create(
            email=f"{tag[:12]}@bench.example.com", name="bench", metadata={}, idempotency_key=f"bench-{tag}"
        )
        card = gateway.payment_method_attach(customer_id=customer, payment_method_id="pm_card_visa")
        accounts.append((customer, card.id))
    return accounts


# --- the results (tested in tests/test_benchmark_renewals_smoke.py) -------------------------------


@dataclass(frozen=True)
class RunResult:
    mode: str  # local | e2e
    workers: int
    subscriptions: int
    renewed: int
    seconds: float
    queries: int
    duplicate_charges: int
    rate_limited: int
    errors: int

    @property
    def renewals_per_s(self) -> float:
        return self.renewed / self.seconds if self.seconds > 0 else 0.0

    @property
    def queries_per_renewal(self) -> float:
        return self.queries / self.renewed if self.renewed else math.nan


def duplicate_charges(invoice_ids_of_creates: Sequence[str]) -> int:
    """PaymentIntents created beyond one per invoice (each create carries our invoice id)."""
    return sum(count - 1 for count in Counter(invoice_ids_of_creates).values() if count > 1)


def format_table(results: Sequence[RunResult]) -> str:
    header = (
        "mode",
        "workers",
        "subscriptions",
        "renewed",
        "seconds",
        "renewals/s",
        "queries/renewal",
        "duplicates",
        "429s",
        "errors",
    )
    rows = [header] + [
        (
            r.mode,
            str(r.workers),
            f"{r.subscriptions:,}",
            f"{r.renewed:,}",
            f"{r.seconds:.1f}",
            f"{r.renewals_per_s:,.0f}",
            f"{r.queries_per_renewal:.1f}",
            str(r.duplicate_charges),
            str(r.rate_limited),
            str(r.errors),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_line(results: Sequence[RunResult]) -> str:
    local = [r for r in results if r.mode == "local"]
    e2e = [r for r in results if r.mode == "e2e"]
    best = lambda runs: max((r.renewals_per_s for r in runs), default=0.0)  # noqa: E731
    queries = max(local, key=lambda r: r.workers).queries_per_renewal if local else math.nan
    return (
        f"local_renewals_per_s={best(local):.0f} e2e_renewals_per_s={best(e2e):.1f} "
        f"queries_per_renewal={queries:.1f} duplicate_charges={sum(r.duplicate_charges for r in results)}"
    )


# --- one worker process ---------------------------------------------------------------------------


def child_main(at_iso: str, start_at: float, limit: int) -> None:
    """A sweeping process: set up, wait for the common start, sweep, print one JSON line."""
    import django

    django.setup()
    from django.db import connection

    from billing.services.renewals import subscriptions_renew_due

    queries = 0

    def count(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    connection.ensure_connection()
    time.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    with connection.execute_wrapper(count):
        report = subscriptions_renew_due(at=dt.datetime.fromisoformat(at_iso), limit=limit)
    print(
        json.dumps(
            {
                "began": began,
                "ended": time.time(),
                "queries": queries,
                "renewed": report.renewed,
                "pending": report.pending,
                "declined": report.declined,
                "errors": len(report.errors),
                "first_errors": report.errors[:3],
            }
        ),
        flush=True,
    )


# --- a run ----------------------------------------------------------------------------------------


def run_once(*, mode: str, workers: int, subscriptions: int, proxy, env: dict, rate: float) -> RunResult:
    from django.db import connections
    from django.test.utils import override_settings

    from billing.models import AttemptStatus, Invoice, PaymentAttempt, Subscription
    from billing.services.renewals import RENEWABLE
    from core.ratebudget import rate_budget_reset

    now = dt.datetime.now(dt.UTC)
    # What an interrupted earlier run left due would be swept first: put it out of the way.
    Subscription.objects.filter(
        offer__code=PLAN_CODE, status__in=RENEWABLE, current_period_end__lte=now
    ).update(current_period_end=now + dt.timedelta(days=3650))
    with override_settings(
        STRIPE_SECRET_KEY="",
        STRIPE_API_BASE=proxy.url,
        STRIPE_MAX_NETWORK_RETRIES=0,
        STRIPE_RATE_LIMIT_PER_SECOND=0,
    ):
        fleet = renewal_fleet_seed(
            subscriptions=subscriptions,
            period_end=now - dt.timedelta(minutes=1),
            stripe_accounts=localstripe_accounts if mode == "e2e" else None,
        )
    connections.close_all()
    proxy.reset()
    proxy.set_answer_payment_intents(mode == "local")
    proxy.set_rate_limit(int(rate) if mode == "e2e" else None)
    rate_budget_reset("stripe")
    child_env = {
        **env,
        "STRIPE_RATE_LIMIT_PER_SECOND": str(rate if mode == "e2e" else 1_000_000),
        "STRIPE_RATE_BUDGET_MAX_WAIT_SECONDS": "60",
    }
    start_at = time.time() + 2.5  # Django starts in every process before the common start
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        now.isoformat(),
        str(start_at),
        str(subscriptions),
    ]
    procs = [
        subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"a sweeping process exited with {proc.returncode}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    seconds = max(o["ended"] for o in outputs) - min(o["began"] for o in outputs)
    creates = [c for c in proxy.calls(method="POST", path=PI_CREATE) if c.reached_upstream]
    renewed_invoices = Invoice.objects.filter(
        subscription_id__in=fleet.subscription_ids, period_start=fleet.period_end
    )
    paid = PaymentAttempt.objects.filter(invoice__in=renewed_invoices, status=AttemptStatus.SUCCEEDED).count()
    if renewed_invoices.count() != subscriptions or paid != subscriptions:
        say(f"  CHECK FAILED: {renewed_invoices.count()} invoices, {paid} paid of {subscriptions}")
    for output in outputs:
        if output["first_errors"]:
            say(f"  errors: {output['first_errors']}")
    return RunResult(
        mode=mode,
        workers=workers,
        subscriptions=subscriptions,
        renewed=paid,  # this run's fleet (a sweep also charges invoices an earlier run left stranded)
        seconds=seconds,
        queries=sum(o["queries"] for o in outputs),
        duplicate_charges=duplicate_charges([c.form.get("metadata[invoice_id]", "") for c in creates])
        + max(0, paid - subscriptions),
        rate_limited=len(proxy.calls(outcome="rate_limited")),
        errors=sum(o["errors"] for o in outputs),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=10_000, help="due subscriptions per local run")
    parser.add_argument("--workers", default="1,2,4", help="sweeping processes: one count or a list (1,2,4)")
    parser.add_argument(
        "--e2e-subscriptions",
        type=int,
        default=None,
        help="due subscriptions per end-to-end run (default: --subscriptions, at most 250: the budget "
        "paces them at --rate per second)",
    )
    parser.add_argument("--rate", type=float, default=25.0, help="the Stripe budget (requests/s) end to end")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    args = parser.parse_args(argv)
    try:
        args.workers = [int(w) for w in str(args.workers).split(",")]
    except ValueError:
        parser.error("--workers: a number or a comma-separated list of numbers")
    if not all(1 <= w <= 16 for w in args.workers):
        parser.error("--workers: 1 to 16 processes")
    if not 1 <= args.subscriptions <= 1_000_000:
        parser.error("--subscriptions: 1 to 1,000,000")
    if args.e2e_subscriptions is None:
        args.e2e_subscriptions = min(args.subscriptions, 250)
    if not 1 <= args.e2e_subscriptions <= 100_000 or not 0 < args.rate <= 1000:
        parser.error("--e2e-subscriptions: 1 to 100,000; --rate: above 0, at most 1000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    database_ensure(args.database_url, recreate=False)
    redis_url = args.redis_url if args.redis_url and redis_reachable(args.redis_url) else ""
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOG_LEVEL": "WARNING",
        "DJANGO_DEBUG": "false",  # as in production: no SQL kept per query
        "STRIPE_SECRET_KEY": "",
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "TEST_DB_SUFFIX": "_bench_renewals",  # the Redis key prefix: apart from tests and the demo
    }
    os.environ.update(
        {
            k: env[k]
            for k in (
                "DATABASE_URL",
                "REDIS_URL",
                "DJANGO_SETTINGS_MODULE",
                "LOG_LEVEL",
                "DJANGO_DEBUG",
                "TEST_DB_SUFFIX",
            )
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    from devtools.stripe_proxy import StripeProxy

    say("migrating")
    call_command("migrate", verbosity=0)
    port = free_port()
    localstripe = subprocess.Popen(
        [sys.executable, "-m", "devtools.localstripe_server", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = StripeProxy(f"http://127.0.0.1:{port}")
    results: list[RunResult] = []
    try:
        _wait_for_localstripe(port)
        proxy.start()
        env["STRIPE_API_BASE"] = proxy.url
        say(f"rate budget: {'Redis ' + redis_url if redis_url else 'per process (no Redis reachable)'}")
        plan = [("local", args.subscriptions)] + ([] if args.skip_e2e else [("e2e", args.e2e_subscriptions)])
        for mode, count in plan:
            for workers in args.workers:
                if mode == "e2e":  # localstripe slows as it grows: every run starts from an empty one
                    urllib.request.urlopen(
                        urllib.request.Request(f"http://127.0.0.1:{port}/_config/data", method="DELETE"),
                        timeout=10,
                    ).close()
                say(f"{mode}: {count:,} due subscriptions, {workers} process(es)")
                result = run_once(
                    mode=mode, workers=workers, subscriptions=count, proxy=proxy, env=env, rate=args.rate
                )
                say(
                    f"  {result.renewed:,} renewed in {result.seconds:.1f} s: "
                    f"{result.renewals_per_s:,.0f}/s, "
                    f"{result.queries_per_renewal:.1f} queries per renewal, {result.duplicate_charges} "
                    f"duplicates, {result.rate_limited} answered 429"
                )
                results.append(result)
    finally:
        proxy.stop()
        localstripe.terminate()
        localstripe.wait(timeout=10)
    say(
        f"\nnote: {os.cpu_count()} CPU cores shared by the sweeping processes, PostgreSQL, Redis, the proxy "
        f"and localstripe. e2e is paced by the Stripe budget ({args.rate:g} requests/s); local runs "
        f"take the budget too, set far above the load. "
        f"Goal: {GOAL_LOCAL_RENEWALS_PER_S:,} local renewals/s.\n"
    )
    say(format_table(results))
    say(summary_line(results))
    failed = any(r.duplicate_charges or r.rate_limited or r.renewed != r.subscriptions for r in results)
    return 1 if failed else 0


def _wait_for_localstripe(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/customers", timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child_main(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
