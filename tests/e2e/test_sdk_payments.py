"""Payments end to end: `tally serve` bills and collects in the background, through the Stripe
SDK pointed at the local fake (two accounts), and Stripe's signed webhooks settle invoices and
paid top-ups; Lago's official client drives and reads everything."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from lago_python_client.client import Client
from lago_python_client.models import Customer, Plan, Subscription, Wallet, WalletTransaction
from lago_python_client.models.customer import CustomerBillingConfiguration

from adapters.stores import open_ledger
from domain import ids
from tests.conftest import Server
from tests.fake_stripe import FakeStripe, fake_stripe

EU_KEY, US_KEY = "sk_test_eu_e2e_0001", "sk_test_us_e2e_0002"
EU_HOOK, US_HOOK = "whsec_eu_e2e_0001", "whsec_us_e2e_0002"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    """The fake Stripe, and `tally serve` pointed at it, billing and collecting every 0.2 s."""
    with fake_stripe(EU_KEY, US_KEY, hang_s=1.0) as running:
        monkeypatch.setenv("TALLY_STRIPE_API_BASE", running.url)
        monkeypatch.setenv("TALLY_STRIPE_TIMEOUT_S", "0.4")
        monkeypatch.setenv("TALLY_BILLING_INTERVAL_S", "0.2")
        yield running


@pytest.fixture
def lago(fake: FakeStripe, server: Server) -> Client:
    for code, key, hook in (("eu", EU_KEY, EU_HOOK), ("us", US_KEY, US_HOOK)):
        response = httpx.post(
            f"{server.url}api/v1/payment_providers",
            json={"payment_provider": {"code": code, "provider": "stripe", "secret_key": key,
                                       "webhook_secret": hook}},
            headers={"Authorization": f"Bearer {server.api_key}"},
        )  # fmt: skip
        assert response.status_code == 200, response.text
    return Client(api_key=server.api_key, api_url=server.url)


def eventually(check: Any, what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def customer_on(lago: Client, external_id: str, code: str) -> None:
    lago.customers.create(
        Customer(
            external_id=external_id,
            currency="EUR",
            billing_configuration=CustomerBillingConfiguration(
                payment_provider="stripe", payment_provider_code=code
            ),
        )
    )


def send(fake: FakeStripe, server: Server, secret: str, event: dict[str, Any]) -> int:
    response = fake.send_event(f"{server.url}api/v1/webhooks/stripe/us", secret, event)
    return response.status_code


def test_an_invoice_is_collected_on_its_account_once_and_paid_by_a_signed_webhook(
    lago: Client, fake: FakeStripe, server: Server
) -> None:
    fake.intent_status = "processing"  # Stripe's answer waits for its webhook.
    fake.fail_next("500")  # An outage, then an answer lost to a timeout after the charge.
    fake.fail_next("timeout")
    lago.plans.create(
        Plan(name="Advance", code="advance", interval="monthly", amount_cents=3000,
             amount_currency="EUR", pay_in_advance=True)
    )  # fmt: skip
    customer_on(lago, "acme", "us")
    lago.subscriptions.create(
        Subscription(
            external_customer_id="acme",
            plan_code="advance",
            external_id="sub_acme",
            billing_time="anniversary",  # A whole period from today: 30.00 EUR.
        )
    )
    [invoice] = eventually(
        lambda: lago.invoices.find_all({"external_customer_id": "acme"})["invoices"],
        "no invoice",
    )
    assert (invoice.status, invoice.total_amount_cents) == ("finalized", 3000)

    # The outage and the lost answer are retried with the same key: one charge, on `us`.
    eventually(lambda: len(fake.recorded("/v1/payment_intents")) >= 3, "no retry after the outage")
    [intent] = fake.payment_intents(US_KEY)
    assert (intent["amount"], intent["currency"], intent["status"]) == (3000, "eur", "processing")
    keys = {c.idempotency_key for c in fake.recorded("/v1/payment_intents")}
    assert keys == {f"tally-invoice-{invoice.lago_id}-attempt-1"}
    assert [c.status for c in fake.recorded("/v1/payment_intents")][:2] == [500, 200]
    assert fake.payment_intents(EU_KEY) == []
    assert intent["metadata"]["lago_invoice_id"] == invoice.lago_id
    found = lago.invoices.find(invoice.lago_id)
    assert found is not None and found.payment_status == "pending"

    # A forged webhook is refused and stored nowhere.
    succeeded = fake.complete_intent(US_KEY, intent["id"], "succeeded")
    event = fake.event("payment_intent.succeeded", succeeded)
    assert send(fake, server, EU_HOOK, event) == 400
    ledger = open_ledger(server.settings)
    organization_id = ids.organization_id("e2e")
    try:
        assert ledger.payment_store.inbox_item(organization_id, "us", event["id"]) is None
        # Signed: the invoice is paid. Again (a redelivery) and an older failure: nothing more.
        assert send(fake, server, US_HOOK, event) == 200
        paid = lago.invoices.find(invoice.lago_id)
        assert paid is not None
        assert (paid.payment_status, paid.total_due_amount_cents) == ("succeeded", 0)
        older = fake.event("payment_intent.payment_failed", {**intent, "status": "failed"})
        for late in (event, older, event):
            assert send(fake, server, US_HOOK, late) == 200
        assert ledger.payment_store.unprocessed(10) == []
    finally:
        ledger.close()
    payments = lago.payments.find_all({"invoice_id": invoice.lago_id})["payments"]
    assert [(p.payment_status, p.amount_cents, p.external_payment_id) for p in payments] == [
        ("succeeded", 3000, intent["id"])
    ]
    final = lago.invoices.find(invoice.lago_id)
    assert final is not None and final.payment_status == "succeeded"
    time.sleep(0.5)  # A few more collection rounds: still one charge.
    assert len(fake.payment_intents(US_KEY)) == 1


def test_a_paid_top_up_settles_its_credits_only_once_its_payment_succeeds(
    lago: Client, fake: FakeStripe, server: Server
) -> None:
    fake.intent_status = "processing"
    customer_on(lago, "acme", "us")
    created = lago.wallets.create(
        Wallet(external_customer_id="acme", currency="EUR", rate_amount="1", code="main")
    )
    assert created is not None
    wallet_id = created.lago_id
    made = lago.wallet_transactions.create(
        WalletTransaction(wallet_id=wallet_id, paid_credits="20")
    )
    [purchase] = made["wallet_transactions"]
    [intent] = eventually(lambda: fake.payment_intents(US_KEY), "no PaymentIntent for the top-up")
    assert (intent["amount"], intent["metadata"]["lago_invoice_id"]) == (
        2000,
        purchase.lago_invoice_id,
    )
    waiting = lago.wallets.find(wallet_id)
    assert waiting is not None and waiting.balance_cents == 0
    event = fake.event("payment_intent.succeeded", fake.complete_intent(US_KEY, intent["id"],
                                                                        "succeeded"))  # fmt: skip
    assert send(fake, server, US_HOOK, event) == 200
    settled = lago.wallets.find(wallet_id)
    assert settled is not None and settled.balance_cents == 2000

    # A declined payment fails its transaction, and no credits arrive.
    fake.fail_next("decline")
    made = lago.wallet_transactions.create(WalletTransaction(wallet_id=wallet_id, paid_credits="5"))
    [declined] = made["wallet_transactions"]

    def failed() -> Any:
        found = lago.wallet_transactions.find_all(wallet_id, {"status": "failed"})
        return found["wallet_transactions"]

    [transaction] = eventually(failed, "the declined top-up is not failed")
    assert transaction.lago_id == declined.lago_id
    after = lago.wallets.find(wallet_id)
    assert after is not None and after.balance_cents == 2000

    # The customer saves a new card through checkout; Lago's retry_payment charges it now.
    url = lago.customers.checkout_url("acme")
    assert url.startswith("https://checkout.stripe.test/")
    fake.intent_status = "succeeded"
    assert declined.lago_invoice_id is not None
    lago.invoices.retry_payment(declined.lago_invoice_id)
    retried = lago.invoices.find(declined.lago_invoice_id)
    assert retried is not None and retried.payment_status == "succeeded"
    keys = [c.idempotency_key for c in fake.recorded("/v1/payment_intents", US_KEY)]
    assert keys[-2:] == [
        f"tally-invoice-{declined.lago_invoice_id}-attempt-1",
        f"tally-invoice-{declined.lago_invoice_id}-attempt-2",
    ]
    topped_up = lago.wallets.find(wallet_id)
    assert topped_up is not None and topped_up.balance_cents == 2500
