"""A seeded random workload over the whole application, for the replay test (R6): customers,
plan edits, subscriptions (upgrades, downgrades, terminations), usage on time and late,
wallets (grants, paid top-ups settled or failed), billing runs, credit notes, voids, manual
payments, customer updates and a webhook endpoint, over a year of a moving clock.

Commands the ledger refuses (a void of a paid invoice, a credit note above what is left) are
part of the workload: they are counted, never raised.
"""

import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from application.errors import ApplicationError
from application.wallets import TopUpValues, WalletValues
from domain.errors import DomainError
from domain.invoice import Invoice
from domain.subscription import Subscription
from tests.reliability.scenario import Catalog, plan_code

CUSTOMERS = ("cus_0", "cus_1", "cus_2", "cus_3")
TIMEZONES = ("UTC", "Europe/Paris", "America/New_York")
INTERVALS = ("weekly", "monthly")


def run_workload(
    catalog: Catalog, rng: random.Random, steps: int, on_step: Callable[[], None] | None = None
) -> Counter[str]:
    """Run `steps` random commands; `on_step` runs after each (a live projection's catch-up)."""
    ledger, org = catalog.ledger, catalog.org
    counts: Counter[str] = Counter()
    subscriptions: list[str] = []
    events = 0

    def invoices(status: str, invoice_type: str | None = None) -> list[Invoice]:
        return [
            i
            for i in catalog.invoices()
            if i.status == status and (invoice_type is None or i.invoice_type == invoice_type)
        ]

    def active() -> list[Subscription]:
        found = []
        for external_id in subscriptions:
            subscription: Subscription = ledger.billing.subscription(org, external_id, None)
            if subscription.is_active_at(catalog.now):
                found.append(subscription)
        return found

    def subscribe() -> None:
        customer = rng.choice(CUSTOMERS)
        ledger.billing.upsert_customer(
            org, customer, {"currency": "EUR", "timezone": rng.choice(TIMEZONES)}
        )
        external_id = f"sub_{len(subscriptions)}"
        ledger.billing.create_subscription(
            org,
            external_id,
            external_customer_id=customer,
            plan_code=plan_code(rng.choice(INTERVALS), rng.randint(1, 3)),
            billing_time=rng.choice(["calendar", "anniversary"]),
            subscription_at=catalog.now - timedelta(days=rng.choice([0, 0, 3])),
        )
        subscriptions.append(external_id)

    def change_plan() -> None:
        subscription = rng.choice(active())
        ledger.billing.create_subscription(
            org,
            subscription.external_id,
            external_customer_id=subscription.external_customer_id,
            plan_code=plan_code(rng.choice(INTERVALS), rng.randint(1, 3)),
        )

    def terminate() -> None:
        ledger.billing.terminate_subscription(org, rng.choice(active()).external_id)

    def ingest() -> None:
        nonlocal events
        subscription = rng.choice(active())
        for _ in range(rng.randint(1, 4)):
            # On time, or late: stamped up to 40 days ago, inside the subscription.
            at = catalog.now - timedelta(minutes=rng.randint(0, 40 * 24 * 60))
            if subscription.is_active_at(at):
                units = rng.randint(1, 500)
                catalog.ingest(subscription.external_id, f"e{events}", at, units)
                if rng.random() < 0.2:  # An identical re-send.
                    catalog.ingest(subscription.external_id, f"e{events}", at, units)
                events += 1

    def edit_plan() -> None:
        code = plan_code(rng.choice(INTERVALS), rng.randint(1, 3))
        plan = catalog.plans[code]
        catalog.edit_plan(code, plan.amount_cents + rng.choice([-100, 100]), plan.unit_price)

    def update_customer() -> None:
        ledger.billing.upsert_customer(org, rng.choice(CUSTOMERS), {"name": f"n{rng.random()}"})

    def top_up() -> None:
        customer = rng.choice(CUSTOMERS)
        credits = Decimal(rng.randint(1, 5000)).scaleb(-2)
        wallets, _ = ledger.wallets.wallets(org, customer, 1, 10)
        if not wallets:
            ledger.wallets.create_wallet(
                org,
                WalletValues(
                    external_customer_id=customer,
                    currency="EUR",
                    rate_amount=Decimal(1),
                    code="main",
                    granted_credits=credits,
                ),
            )
        elif rng.random() < 0.5:
            ledger.wallets.top_up(org, wallets[0].id, TopUpValues(granted_credits=credits))
        else:
            ledger.wallets.top_up(org, wallets[0].id, TopUpValues(paid_credits=credits))

    def settle() -> None:
        pending = [i for i in invoices("finalized") if i.payment_status != "succeeded"]
        invoice = rng.choice(pending)
        if rng.random() < 0.5:
            status = rng.choice(["succeeded", "succeeded", "failed"])
            ledger.invoicing.set_payment_status(org, invoice.id, status)
        else:
            ledger.payments.create_manual_payment(
                org, invoice.id, invoice.total_due_amount_cents, f"ref{rng.random()}", None
            )

    def bill() -> None:
        ledger.invoicing.run(catalog.now)

    def credit_note() -> None:
        invoice = rng.choice(invoices("finalized", "subscription"))
        fee = rng.choice([f for f in invoice.fees if f.amount_cents > 0])
        left = fee.amount_cents - invoice.credited_fee_cents.get(fee.key, 0)
        cents = rng.randint(1, max(1, left + 1))  # Sometimes one cent too many: refused.
        ledger.credit_notes.create(
            org, invoice.id, [(fee.key, cents)], reason="other", credit_amount_cents=cents
        )

    def void() -> None:
        ledger.invoicing.void(org, rng.choice(invoices("finalized")).id, catalog.now)

    def webhook_endpoint() -> None:
        if catalog.webhooks is not None:
            catalog.webhooks.create_endpoint(
                org,
                webhook_url=f"https://example.com/hook{rng.randint(0, 2)}",
                signature_algo=None,
                name=None,
                event_types=None,
            )

    commands: list[tuple[Callable[[], None], int]] = [
        (subscribe, 3),
        (change_plan, 2),
        (terminate, 1),
        (ingest, 8),
        (edit_plan, 1),
        (update_customer, 1),
        (top_up, 2),
        (settle, 2),
        (bill, 3),
        (credit_note, 2),
        (void, 1),
        (webhook_endpoint, 1),
    ]
    population = [command for command, _ in commands]
    weights = [weight for _, weight in commands]
    for _ in range(steps):
        catalog.at(catalog.now + timedelta(minutes=rng.randint(0, 6 * 24 * 60)))
        command = rng.choices(population, weights)[0]
        try:
            command()
        except (ApplicationError, DomainError):
            counts["refused"] += 1
        except IndexError:  # Nothing to choose from yet (rng.choice of an empty list).
            counts["skipped"] += 1
        else:
            counts[command.__name__] += 1
        if on_step is not None:
            on_step()
    catalog.at(catalog.now + timedelta(days=40))
    ledger.invoicing.run(catalog.now)
    counts["events"] = events
    return counts
