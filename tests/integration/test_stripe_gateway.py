"""The Stripe adapter: the official SDK against the local fake, one client per account."""

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from uuid import UUID, uuid4

import pytest
import stripe

from adapters.stripe_gateway import (
    StripeGateway,
    from_stripe_amount,
    to_stripe_amount,
)
from application.payments import (
    PaymentRequest,
    ProviderCustomer,
    ProviderUnavailableError,
    RefundRequest,
    WebhookSignatureError,
)
from tests.fake_stripe import FakeStripe, fake_stripe

EU_KEY, US_KEY = "sk_test_eu_0001", "sk_test_us_0002"
WEBHOOK_SECRET = "whsec_test_secret_1"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with fake_stripe(EU_KEY, US_KEY, hang_s=0.6) as running:
        yield running


def gateway(fake: FakeStripe, key: str = EU_KEY) -> StripeGateway:
    return StripeGateway(key, WEBHOOK_SECRET, api_base=fake.url, timeout_s=0.3)


def request(customer: str, method: str | None, *, amount_cents: int = 1234, key: str = "k1",
            currency: str = "EUR") -> PaymentRequest:  # fmt: skip
    return PaymentRequest(
        organization_id=uuid4(),
        payment_id=UUID(int=1),
        invoice_id=UUID(int=2),
        idempotency_key=key,
        amount_cents=amount_cents,
        currency=currency,
        provider_customer_id=customer,
        payment_method_id=method,
        reference=None,
        description="Invoice ACM-001",
    )


def new_customer(stripe_gateway: StripeGateway) -> tuple[str, str]:
    customer = stripe_gateway.create_customer(
        ProviderCustomer(uuid4(), "acme", "Acme", "billing@acme.test"), idempotency_key=str(uuid4())
    )
    method = stripe_gateway.default_payment_method(customer)
    assert method is not None
    return customer, method


def test_each_connection_speaks_to_its_own_account(fake: FakeStripe) -> None:
    eu, us = gateway(fake, EU_KEY), gateway(fake, US_KEY)
    customer, method = new_customer(eu)
    result = eu.create_payment(request(customer, method))
    assert (result.status, result.provider_payment_id) == ("succeeded", result.provider_payment_id)
    [intent] = fake.payment_intents(EU_KEY)
    assert (intent["amount"], intent["currency"], intent["customer"]) == (1234, "eur", customer)
    assert intent["metadata"] == {
        "tally_payment_id": str(UUID(int=1)),
        "lago_invoice_id": str(UUID(int=2)),
    }
    [call] = fake.recorded("/v1/payment_intents")
    assert (call.account, call.idempotency_key, call.params["off_session"]) == (
        EU_KEY,
        "k1",
        "true",
    )
    assert fake.payment_intents(US_KEY) == []
    assert us.find_payment(str(result.provider_payment_id)) is None  # Another account's.
    assert eu.find_payment(str(result.provider_payment_id)) == UUID(int=1)


def test_the_same_idempotency_key_never_charges_twice(fake: FakeStripe) -> None:
    eu = gateway(fake)
    customer, method = new_customer(eu)
    first = eu.create_payment(request(customer, method))
    again = eu.create_payment(request(customer, method))
    assert first == again
    assert len(fake.charges(EU_KEY)) == 1


def test_an_outage_is_unavailable_and_the_retry_finds_the_first_charge(fake: FakeStripe) -> None:
    eu = gateway(fake)
    customer, method = new_customer(eu)
    fake.fail_next("500")
    with pytest.raises(ProviderUnavailableError):
        eu.create_payment(request(customer, method))
    assert fake.payment_intents(EU_KEY) == []
    fake.fail_next("timeout")  # Stripe charges, but the answer is lost.
    with pytest.raises(ProviderUnavailableError):
        eu.create_payment(request(customer, method))
    assert len(fake.charges(EU_KEY)) == 1
    retried = eu.create_payment(request(customer, method))
    assert retried.status == "succeeded"
    assert [intent["id"] for intent in fake.charges(EU_KEY)] == [retried.provider_payment_id]
    keys = {call.idempotency_key for call in fake.recorded("/v1/payment_intents")}
    assert keys == {"k1"}


def test_a_declined_card_fails_with_its_decline_code_and_names_the_intent(
    fake: FakeStripe,
) -> None:
    eu = gateway(fake)
    customer, method = new_customer(eu)
    fake.fail_next("decline")
    result = eu.create_payment(request(customer, method))
    assert (result.status, result.failure_code) == ("failed", "insufficient_funds")
    [intent] = fake.payment_intents(EU_KEY)
    assert result.provider_payment_id == intent["id"]


@pytest.mark.parametrize(
    ("currency", "amount_cents", "stripe_amount"),
    [("EUR", 1234, 1234), ("JPY", 1234, 1234), ("ISK", 1234, 123400), ("KWD", 12340, 12340)],
)
def test_amounts_follow_stripes_decimals(
    fake: FakeStripe, currency: str, amount_cents: int, stripe_amount: int
) -> None:
    eu = gateway(fake)
    customer, method = new_customer(eu)
    eu.create_payment(request(customer, method, amount_cents=amount_cents, currency=currency))
    [intent] = fake.payment_intents(EU_KEY)
    assert (intent["amount"], intent["currency"]) == (stripe_amount, currency.lower())
    assert from_stripe_amount(stripe_amount, currency) == amount_cents


@pytest.mark.parametrize(
    ("currency", "amount_cents", "code"),
    [("EUR", 49, "amount_too_small"), ("JPY", 49, "amount_too_small"),
     ("KWD", 12345, "amount_not_representable")],
)  # fmt: skip
def test_an_amount_stripe_cannot_take_is_canceled_before_any_call(
    fake: FakeStripe, currency: str, amount_cents: int, code: str
) -> None:
    result = gateway(fake).create_payment(
        request("cus_x", "pm_x", amount_cents=amount_cents, currency=currency)
    )
    assert (result.status, result.failure_code) == ("canceled", code)
    assert fake.recorded("/v1/payment_intents") == []


def test_checkout_makes_a_setup_session_and_a_saved_method_becomes_the_default(
    fake: FakeStripe,
) -> None:
    eu = gateway(fake)
    customer, _ = new_customer(eu)
    url = eu.checkout_url(customer, "EUR", "https://acme.test/thanks")
    [session] = fake.objects(EU_KEY, "checkout.session")
    assert url == session["url"] and session["mode"] == "setup"
    eu.set_default_payment_method(customer, "pm_new")
    assert eu.default_payment_method(customer) == "pm_new"


def test_a_refund_goes_to_the_intent_with_its_own_key(fake: FakeStripe) -> None:
    eu = gateway(fake)
    customer, method = new_customer(eu)
    paid = eu.create_payment(request(customer, method))
    assert paid.provider_payment_id is not None
    refund = RefundRequest("r1", UUID(int=1), UUID(int=3), paid.provider_payment_id, 234, "EUR")
    first, again = eu.refund(refund), eu.refund(refund)
    assert first == again and first.status == "succeeded"
    [refunded] = fake.objects(EU_KEY, "refund")
    assert (refunded["amount"], refunded["metadata"]["tally_credit_note_id"]) == (
        234,
        str(UUID(int=3)),
    )


def test_webhooks_are_verified_with_the_sdk_and_normalized(fake: FakeStripe) -> None:
    eu = gateway(fake)
    intent = {
        "id": "pi_1",
        "object": "payment_intent",
        "customer": "cus_1",
        "metadata": {"tally_payment_id": str(UUID(int=1))},
        "last_payment_error": None,
    }
    payload = json.dumps(fake.event("payment_intent.succeeded", intent, event_id="evt_1"))
    signature = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    event = eu.parse_webhook(payload.encode(), signature)
    assert (event.event_id, event.event_type, event.payment_id, event.provider_payment_id) == (
        "evt_1",
        "payment_intent.succeeded",
        UUID(int=1),
        "pi_1",
    )
    forged = stripe.WebhookSignature.generate_signature_header(payload, "whsec_another_one")
    for bad in (forged, None, "t=1,v1=00"):
        with pytest.raises(WebhookSignatureError):
            eu.parse_webhook(payload.encode(), bad)


def test_conversions_round_trip_for_every_stripe_decimal_rule() -> None:
    assert to_stripe_amount(500, "ISK") == 50_000
    assert from_stripe_amount(50_000, "ISK") == 500
    assert to_stripe_amount(20_000, "HUF") == 20_000  # Two decimals for charges.


def test_balance_transactions_name_the_payment_and_its_fee_and_payouts_are_listed(
    fake: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.stripe_gateway.LIST_PAGE_SIZE", 2)  # Paging, through the SDK.
    eu = gateway(fake)
    customer, method = new_customer(eu)
    fake.now = int(datetime(2026, 3, 5, 10, tzinfo=UTC).timestamp())
    paid = eu.create_payment(request(customer, method, amount_cents=10_000, key="a1"))
    assert paid.provider_payment_id is not None
    fake.now += 3_600
    eu.create_payment(request(customer, method, amount_cents=500, key="a2"))
    fake.now += 3_600
    refund = eu.refund(
        RefundRequest("r1", UUID(int=1), UUID(int=3), paid.provider_payment_id, 2_500, "EUR")
    )
    fake.now += 3_600
    payout = fake.pay_out(EU_KEY)
    fake.now = int(datetime(2026, 4, 2, tzinfo=UTC).timestamp())
    fake.add_balance_transaction(EU_KEY, "adjustment", -100)  # Outside the window below.
    found = eu.balance_transactions(
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    )
    assert [(t.kind, t.amount_cents, t.fee_cents, t.net_cents) for t in found] == [
        ("charge", 10_000, 165, 9_835),  # 1.4 % + 0.25
        ("charge", 500, 32, 468),
        ("refund", -2_500, 0, -2_500),
        ("payout", -7_803, 0, -7_803),
    ]
    charge = found[0]
    assert (charge.provider_payment_id, charge.payment_id, charge.currency) == (
        paid.provider_payment_id,
        UUID(int=1),
        "EUR",
    )
    assert charge.created_at == datetime(2026, 3, 5, 10, tzinfo=UTC)
    assert (found[2].provider_refund_id, found[2].provider_payment_id) == (
        refund.provider_refund_id,
        paid.provider_payment_id,
    )
    assert found[3].payout_id == payout["id"]
    lists = fake.recorded("/v1/balance_transactions")
    assert len(lists) == 2  # Two pages of two.
    assert lists[0].params["created"] == {
        "gte": str(int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())),
        "lt": str(int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())),
    }
    [listed] = eu.payouts(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert (listed.payout_id, listed.amount_cents, listed.currency, listed.arrival_on) == (
        payout["id"],
        7_803,
        "EUR",
        date(2026, 3, 7),
    )
    assert (
        gateway(fake, US_KEY).balance_transactions(
            datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
        )
        == []
    )
