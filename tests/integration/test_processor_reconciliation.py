"""`tally reconcile` matches the processor's balance transactions to the payments Tally recorded
(ADR 0021), on SQLite and PostgreSQL, with the real Stripe adapter talking to the local fake:
a charge matches its payment, the fee and the payout are reported, and a movement Tally did not
cause is a difference."""

from datetime import UTC, datetime

import pytest

from adapters.payment_processors import Processors
from adapters.settings import Settings
from adapters.stores import open_ledger
from api.cli import main
from tests.fake_stripe import fake_stripe

KEY, HOOK = "sk_test_reconcile_0001", "whsec_reconcile_0001"
MARCH_1 = datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_tally_reconcile_matches_stripe_balance_transactions_to_payments(
    store_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with fake_stripe(KEY) as fake:
        ledger = open_ledger(store_settings, payment_providers=Processors(fake.url, 5.0))
        try:
            ledger.billing.now = lambda: MARCH_1
            fake.now = int(MARCH_1.timestamp())
            billing = ledger.billing
            organization, _ = billing.create_organization("acme")
            org = organization.id
            ledger.payments.create_connection(
                org, "eu", "stripe", {}, {"secret_key": KEY, "webhook_secret": HOOK}
            )
            billing.create_plan(
                org,
                "advance",
                {
                    "name": "Advance",
                    "interval": "monthly",
                    "amount_cents": 3000,
                    "amount_currency": "EUR",
                    "pay_in_advance": True,
                    "charges": [],
                },
            )
            billing.upsert_customer(
                org,
                "acme",
                {
                    "currency": "EUR",
                    "billing_configuration": {
                        "payment_provider": "stripe",
                        "payment_provider_code": "eu",
                    },
                },
            )
            billing.create_subscription(
                org, "sub_1", external_customer_id="acme", plan_code="advance",
                subscription_at=MARCH_1,
            )  # fmt: skip
            [invoice] = ledger.invoicing.run(MARCH_1)
            billing.catch_up()
            [payment] = ledger.payments.collect(MARCH_1)
            assert payment.status == "succeeded"
        finally:
            ledger.close()
        fake.now += 86_400
        payout = fake.pay_out(KEY)
        monkeypatch.setenv("TALLY_DATABASE_URL", store_settings.database_url)
        monkeypatch.setenv("TALLY_STRIPE_API_BASE", fake.url)
        assert main(["reconcile", "--period", "2026-03"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines == [
            f"Processor eu: 1 matched; fees EUR 0.67; payout {payout['id']} EUR 29.33 arriving "
            "2026-03-04.",
            "Reconciled 2026-03: 0 differences.",
        ]
        # A movement Tally did not cause is reported, and the command fails.
        adjustment = fake.add_balance_transaction(KEY, "adjustment", -150)
        assert main(["reconcile", "--period", "2026-03", "--org", "acme"]) == 1
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0] == (
            f"processor eu other {adjustment['id']} adjustment EUR: processor -150, recorded None"
        )
        assert lines[-1] == "Reconciled 2026-03: 1 differences."
        # February saw nothing.
        assert main(["reconcile", "--period", "2026-02"]) == 0
        assert capsys.readouterr().out.strip() == "Reconciled 2026-02: 0 differences."
        assert invoice.id == payment.invoice_id
