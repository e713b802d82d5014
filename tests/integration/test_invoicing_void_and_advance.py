"""On SQLite and PostgreSQL: a void with a credit note returning a wallet's credits, a
pay-in-advance fee, a late recount credited, past usage; replayed from the stores, the journal
ties out and every audit matches."""

from datetime import UTC, date, datetime
from decimal import Decimal

from adapters.stores import Ledger
from application.metering import EventInput
from application.wallets import WalletValues

MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
MARCH_10 = datetime(2026, 3, 10, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


def test_void_advance_fees_and_late_credits_on_both_stores(store_ledger: Ledger) -> None:
    ledger = store_ledger
    billing = ledger.billing
    at(ledger, MARCH_1)
    organization, _ = billing.create_organization("acme")
    org = organization.id
    tokens = billing.create_billable_metric(
        org, "tokens", {"name": "Tokens", "aggregation_type": "sum_agg", "field_name": "tokens"}
    )
    seats = billing.create_billable_metric(
        org, "seats", {"name": "Seats", "aggregation_type": "count_agg", "field_name": None}
    )
    billing.create_plan(
        org,
        "basic",
        {
            "name": "Basic",
            "interval": "monthly",
            "amount_cents": 2000,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(tokens.id),
                    "charge_model": "standard",
                    "properties": {"amount": "0.01"},
                },
                {
                    "billable_metric_id": str(seats.id),
                    "charge_model": "standard",
                    "pay_in_advance": True,
                    "properties": {"amount": "3"},
                },
            ],
        },
    )
    billing.upsert_customer(org, "cus", {"currency": "EUR"})
    billing.create_subscription(
        org, "sub", external_customer_id="cus", plan_code="basic", subscription_at=MARCH_1
    )
    ledger.wallets.create_wallet(
        org,
        WalletValues(
            external_customer_id="cus",
            currency="EUR",
            rate_amount=Decimal(1),
            code="w",
            granted_credits=Decimal(5),
        ),
    )
    at(ledger, MARCH_10)

    def send(transaction_id: str, code: str, properties: dict[str, int]) -> None:
        ledger.metering.ingest(
            org,
            [EventInput(transaction_id, "sub", code, int(MARCH_10.timestamp()), properties, None)],
            batch=False,
        )

    send("t1", "tokens", {"tokens": 1000})
    send("t2", "tokens", {"tokens": 500})
    send("s1", "seats", {})
    [advance] = ledger.invoicing.run(MARCH_10)  # The seat, at once: 3.00, the wallet pays it.
    assert [(f.event_transaction_id, f.amount_cents) for f in advance.fees] == [("s1", 300)]
    at(ledger, APRIL_1)
    [march] = [i for i in ledger.invoicing.run(APRIL_1) if i.id != advance.id]
    # 20.00 + 15.00 of tokens; the seat is not billed again; the wallet's last 2.00 pays it.
    assert sorted(f.amount_cents for f in march.fees) == [1500, 2000]
    assert march.totals.prepaid_credit_amount_cents == 200
    at(ledger, APRIL_2)
    ledger.invoicing.set_payment_status(org, march.id, "succeeded")
    voided = ledger.invoicing.void(
        org, march.id, APRIL_2, generate_credit_note=True, refund_amount_cents=3300
    )
    assert voided.status == "voided"
    [wallet] = ledger.wallets.wallets(org, "cus", 1, 10)[0]
    assert ledger.wallets.wallet(org, wallet.id).balance_cents == 200
    # A recount of March lowering a voided invoice: nothing left to credit.
    ledger.metering.void(org, "t2", "sub")
    at(ledger, MAY_1)
    ledger.invoicing.run(MAY_1)
    notes, _ = ledger.credit_notes.credit_notes(org, 1, 100)
    assert sorted((n.refund_amount_cents, n.offset_amount_cents) for n in notes) == [
        (0, 200),
        (3300, 0),
    ]  # The voided invoice takes no late credit note.
    assert ledger.journal.reconcile(date(2026, 3, 1), date(2026, 5, 31), org) == []
    for invoice in ledger.invoicing.invoices(org, 1, 100)[0]:
        assert ledger.invoicing.audit(org, invoice.id).matches, invoice.id
    # Past usage, newest first: April (nothing), March (tokens 15.00 + the seat paid in advance).
    april, march_usage = ledger.invoicing.past_usage(org, "cus", "sub", periods_count=2)
    assert (april.from_at, april.amount_cents) == (APRIL_1, 0)
    assert (march_usage.invoice.id, march_usage.amount_cents) == (march.id, 1500 + 300)
