"""R11, seeded fault injection in the store adapter (adapters/faults.py, ADR 0024): while
clients ingest usage, top up wallets (granted and paid credits: purchase invoices) and
terminate subscriptions (final invoices) through the API, the store's transactions fail before
they begin, lose their connection before the commit, commit slowly, or commit and lose the
answer. Clients retry a 503 (and a 409 conflict) with the same transaction_id or
Idempotency-Key until it is acknowledged.

Invariants: a store failure is a 503 with Retry-After, never a 5xx of another kind
(`server_errors`); each acknowledged event is stored (`acked_lost`) and counted once
(`duplicates`); rollups equal the raw log and every paid top-up has both its invoice and its
wallet entry (`partial_state`); each acknowledged top-up is one wallet entry
(`duplicate_top_ups`); each wallet's balance is the sum of its entries
(`conservation_violations`); every subscription invoice's audit matches (`audit_mismatches`).

Fast tier: SQLite, 4 clients, 240 events, 24 top-ups; deep: SQLite and PostgreSQL, 8 clients,
2,000 events, 120 top-ups. TALLY_SEED=<n> replays the fault sequence and the clients' choices.
"""

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from adapters.faults import FaultInjector, FaultPlan, inject
from adapters.settings import Settings
from adapters.stores import Ledger, open_ledger
from api.app import create_app
from domain.usage import combine, rollup_of_value
from domain.wallet import Wallet
from tests.reliability.battery import report, seed, tier

pytestmark = pytest.mark.reliability

CLIENTS = tier(4, 8)
EVENTS = tier(240, 2_000)
TOP_UPS = tier(24, 120)
SUBSCRIPTIONS = ("sub_0", "sub_1", "sub_2")
ATTEMPTS_MAX = 60
RUN_ATTEMPTS_MAX = 2_000
PLAN = {"error": 0.06, "drop": 0.06, "slow": 0.04, "lost_ack": 0.04, "slow_s": 0.01}


class Client:
    """A retrying API client: the same request until it is acknowledged (or refused for good)."""

    def __init__(self, http: TestClient[Litestar], api_key: str, figures: Counter[str]) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.figures = figures
        self.lock = threading.Lock()
        self.samples: list[str] = []

    def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        headers = {**self.headers, **({"Idempotency-Key": key} if key else {})}
        for attempt in range(ATTEMPTS_MAX):
            response = self.http.request(method, f"/api/v1{path}", json=body, headers=headers)
            status = response.status_code
            with self.lock:
                self.figures[f"status_{status}"] += 1
                if status >= 500 and (status != 503 or "retry-after" not in response.headers):
                    self.figures["server_errors"] += 1
                    self.samples.append(f"{method} {path} {status} {response.text[:300]}")
            if status == 503 or (status == 409 and attempt < ATTEMPTS_MAX - 1):
                time.sleep(0.002 * (attempt + 1))  # Retry-After says 1 s: a test waits less.
                continue
            if status >= 500:
                continue
            return response
        raise AssertionError(f"{method} {path}: not acknowledged after {ATTEMPTS_MAX} attempts")


@pytest.fixture
def faulty(store_settings: Settings) -> Iterator[tuple[Ledger, FaultInjector, int]]:
    base = seed()
    ledger = open_ledger(store_settings)
    injector = FaultInjector(FaultPlan(seed=base, **PLAN))  # type: ignore[arg-type]
    injector.armed = False
    inject(ledger.billing.factory.datastore, injector)
    tally_logger = logging.getLogger("tally")
    level = tally_logger.level
    tally_logger.setLevel(logging.CRITICAL)  # The 503s' warnings, the audit writer's errors.
    try:
        yield ledger, injector, base
    finally:
        tally_logger.setLevel(level)
        injector.armed = False
        ledger.close()


@pytest.mark.parametrize("store_settings", tier(["sqlite"], ["sqlite", "postgres"]), indirect=True)
def test_store_faults_give_retryable_503s_and_never_partial_state(
    faulty: tuple[Ledger, FaultInjector, int],
) -> None:
    ledger, injector, base = faulty
    organization, api_key = ledger.billing.create_organization("faults")
    org = organization.id
    figures: Counter[str] = Counter()
    rng = random.Random(base)
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    events = [
        {
            "transaction_id": f"tx_{n}",
            "external_subscription_id": rng.choice(SUBSCRIPTIONS),
            "code": "calls",
            "timestamp": int((start + timedelta(seconds=rng.randrange(3600))).timestamp()),
            "properties": {"units": str(rng.randint(1, 9))},
        }
        for n in range(EVENTS)
    ]
    top_ups = [
        {"kind": rng.choice(["granted_credits", "paid_credits"]), "credits": rng.randint(1, 50)}
        for _ in range(TOP_UPS)
    ]
    acked_events: set[str] = set()
    acked_top_ups: dict[str, list[UUID]] = {}
    invoices: set[UUID] = set()
    with TestClient(app=create_app(ledger), raise_server_exceptions=False) as http:
        client = Client(http, api_key, figures)
        wallet_id = setup(client, start)
        injector.armed = True
        work: list[tuple[str, Any]] = [
            *(("events", events[n : n + 10]) for n in range(0, len(events), 10)),
            *(("top_up", (n, t)) for n, t in enumerate(top_ups)),
        ]
        rng.shuffle(work)
        lock = threading.Lock()
        failures: list[str] = []

        def worker() -> None:
            try:
                work_until_done()
            except BaseException as error:  # Reported by the main thread, not lost.
                with lock:
                    failures.append(repr(error))

        def work_until_done() -> None:
            while True:
                with lock:
                    if not work:
                        return
                    kind, item = work.pop()
                if kind == "events":
                    response = client.call("POST", "/events/batch", {"events": item})
                    assert response.status_code == 200, response.text
                    with lock:
                        acked_events.update(e["transaction_id"] for e in item)
                else:
                    number, top_up = item
                    body = {
                        "wallet_transaction": {
                            "wallet_id": wallet_id,
                            top_up["kind"]: str(top_up["credits"]),
                        }
                    }
                    response = client.call("POST", "/wallet_transactions", body, key=f"tu_{number}")
                    assert response.status_code == 200, response.text
                    created = response.json()["wallet_transactions"]
                    with lock:
                        acked_top_ups[f"tu_{number}"] = [UUID(t["lago_id"]) for t in created]
                        invoices.update(
                            UUID(t["invoice_id"]) for t in created if t.get("invoice_id")
                        )

        threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        # Final invoices: terminate every subscription, still under faults.
        for subscription in SUBSCRIPTIONS:
            response = client.call("DELETE", f"/subscriptions/{subscription}")
            assert response.status_code in (200, 404), response.text
        # The billing worker's run, under faults too: retried until it completes, as the worker
        # runs again at its next interval. A run is dozens of transactions, any of which may
        # fail, so it takes many attempts (each fails fast).
        for attempt in range(RUN_ATTEMPTS_MAX):
            try:
                ledger.invoicing.run(datetime.now(UTC))
                break
            except Exception as error:  # A store fault: the worker runs again.
                figures["billing_run_retries"] += 1
                assert attempt < RUN_ATTEMPTS_MAX - 1, error
        elapsed_s = time.monotonic() - began
        injector.armed = False
        listed = client.call("GET", "/invoices?per_page=1000").json()["invoices"]
        audit_mismatches = 0
        credit_invoices = set()
        for invoice in listed:
            invoices.add(UUID(invoice["lago_id"]))
            if invoice["invoice_type"] == "credit":
                credit_invoices.add(UUID(invoice["lago_id"]))
            if invoice["invoice_type"] == "subscription":
                figures["subscription_invoices"] += 1
                audit = client.call("GET", f"/invoices/{invoice['lago_id']}/audit").json()
                audit_mismatches += int(audit["invoice_audit"]["result"] != "match")

        # The ledger, read directly after the faults (before the app's shutdown closes it).
        acked_lost = sum(1 for tx in acked_events if stored(ledger, org, events, tx) is None)
        stored_rows = ledger.usage.page(org, 1, 1)[1]
        partial_state = rollup_mismatches(ledger, org, start)
        wallet: Wallet = ledger.wallets.wallet(org, UUID(wallet_id))
        conservation_violations = len(wallet.invariant_violations())
        inbound = [e for e in wallet.entries() if e.kind in ("granted", "purchased")]
        acked_entries = [t for ids in acked_top_ups.values() for t in ids]
        missing_entries = sum(1 for t in acked_entries if t not in wallet.transactions)
        # A paid top-up: its invoice and its wallet entry, both or neither.
        purchased = {e.invoice_id for e in inbound if e.kind == "purchased"}
        partial_state += len(purchased ^ credit_invoices)

    requests = sum(v for k, v in figures.items() if k.startswith("status_"))
    passed = report(
        "R11",
        f"fault_injection[{ledger.settings.store}]",
        seed=base,
        runs=1,
        failures={
            "partial_state": partial_state,
            "acked_lost": acked_lost,
            "server_errors": figures["server_errors"],
            "duplicates": max(0, stored_rows - len(acked_events)),
            "missing_top_ups": missing_entries,
            "conservation_violations": conservation_violations,
            "audit_mismatches": audit_mismatches,
            "duplicate_top_ups": max(0, len(inbound) - len(acked_top_ups)),
        },
        billing_run_retries=figures["billing_run_retries"],
        faults=sum(injector.injected.values()),
        **{f"faults_{kind}": count for kind, count in sorted(injector.injected.items())},
        transactions=injector.transactions,
        responses_503=figures["status_503"],
        events=len(acked_events),
        top_ups=len(acked_top_ups),
        invoices=len(invoices),
        subscription_invoices=figures["subscription_invoices"],
        requests_per_s=round(requests / elapsed_s),
    )
    assert passed, (base, client.samples[:5], wallet.invariant_violations())
    assert len(acked_events) == EVENTS and len(acked_top_ups) == TOP_UPS
    assert figures["status_503"] > 0 and injector.injected["lost_ack"] > 0  # Faults happened.


def setup(client: Client, start: datetime) -> str:
    """A count metric, a plan, the subscriptions and a wallet; returns the wallet's lago_id."""
    metric = {
        "name": "Calls",
        "code": "calls",
        "aggregation_type": "sum_agg",
        "field_name": "units",
    }
    client.call("POST", "/billable_metrics", {"billable_metric": metric})
    metric_id = client.call("GET", "/billable_metrics/calls").json()["billable_metric"]["lago_id"]
    plan = {
        "name": "Calls",
        "code": "calls",
        "interval": "monthly",
        "amount_cents": 500,
        "amount_currency": "EUR",
        "pay_in_advance": False,
        "charges": [
            {
                "billable_metric_id": metric_id,
                "charge_model": "standard",
                "properties": {"amount": "0.01"},
            }
        ],
    }
    client.call("POST", "/plans", {"plan": plan})
    for subscription in SUBSCRIPTIONS:
        body = {
            "external_customer_id": "cus_1",
            "plan_code": "calls",
            "external_id": subscription,
            "subscription_at": start.isoformat(),
            "billing_time": "calendar",
        }
        response = client.call("POST", "/subscriptions", {"subscription": body})
        assert response.status_code == 200, response.text
    wallet = {"external_customer_id": "cus_1", "currency": "EUR", "rate_amount": "1"}
    response = client.call("POST", "/wallets", {"wallet": wallet})
    assert response.status_code == 200, response.text
    return str(response.json()["wallet"]["lago_id"])


def stored(ledger: Ledger, org: UUID, events: list[dict[str, Any]], tx: str) -> Any:
    subscription = next(e["external_subscription_id"] for e in events if e["transaction_id"] == tx)
    return ledger.usage.find(org, tx, subscription)


def rollup_mismatches(ledger: Ledger, org: UUID, start: datetime) -> int:
    """Rollup totals against the raw events, per subscription, over the month."""
    end = start + timedelta(days=40)
    mismatches = 0
    for subscription in SUBSCRIPTIONS:
        from_rollups = ledger.usage.totals(org, subscription, "calls", start, end)
        raw_events = ledger.usage.events(org, subscription, "calls", start, end)
        raw = combine(rollup_of_value(e.event.timestamp, e.value) for e in raw_events)
        rolled = combine(t.rollup for t in from_rollups)
        mismatches += int((rolled.count, rolled.sum) != (raw.count, raw.sum))
    return mismatches
