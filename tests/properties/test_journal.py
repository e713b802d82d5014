"""Issue 11 against a model: random billing runs, payments and their reversals, voids, credit
notes (credit, refund, offset), refunds paid, notes voided, wallet grants, paid top-ups,
consumption, voided credits and terminated wallets, through the application on the memory
store. After every step the journal balances, every account's balance equals what the
invoices, credit notes and wallets say, and `reconcile` finds no difference."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from application.journal import RowFilter, paid_by_payments_cents
from application.wallets import TopUpValues, WalletValues
from domain import journal
from domain.credit_note import CreditNote
from domain.invoice import Invoice
from domain.periods import add_months
from domain.wallet import Wallet

START = datetime(2026, 1, 1, tzinfo=UTC)
EVER = (date(2000, 1, 1), date(2100, 12, 31))
CUSTOMERS = {"acme": "FR", "beta": "DE"}
INDEX = st.integers(0, 50)
CENTS = st.integers(1, 6_000)


class JournalMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.ledger: Ledger = open_ledger(memory_settings())
        billing = self.ledger.billing
        organization, _ = billing.create_organization("acme")
        self.org = organization.id
        self.now = START
        self._at(self.now)
        billing.create_tax(
            self.org, "vat", {"name": "VAT", "rate": "20", "applied_to_organization": True}
        )
        billing.create_plan(
            self.org,
            "advance",
            {
                "name": "advance",
                "interval": "monthly",
                "amount_cents": 3_000,
                "amount_currency": "EUR",
                "pay_in_advance": True,
                "charges": [],
            },
        )
        for external_id, country in CUSTOMERS.items():
            billing.upsert_customer(self.org, external_id, {"country": country, "currency": "EUR"})
            billing.create_subscription(
                self.org,
                f"sub_{external_id}",
                external_customer_id=external_id,
                plan_code="advance",
                subscription_at=START,
            )
        self.wallet_codes = 0
        self.wallet_id = self._new_wallet()
        self.wallet_ids = [self.wallet_id]
        # A start with something in every account: January billed, credits granted and bought.
        self.ledger.invoicing.run(START)
        self.grant(1_000)
        self.buy(2_000, pay_now=True)

    def teardown(self) -> None:
        if hasattr(self, "ledger"):
            self.ledger.close()

    # Helpers.

    def _at(self, instant: datetime) -> None:
        self.ledger.billing.now = lambda: instant

    def _tick(self) -> None:
        self.now += timedelta(hours=5)
        self._at(self.now)

    def _new_wallet(self) -> UUID:
        self.wallet_codes += 1
        created = self.ledger.wallets.create_wallet(
            self.org,
            WalletValues(
                external_customer_id="acme",
                currency="EUR",
                rate_amount=Decimal(1),
                code=f"w{self.wallet_codes}",
            ),
        )
        return created.id

    def _invoices(self) -> list[Invoice]:
        found, _ = self.ledger.invoicing.invoices(self.org, 1, 10**6)
        return sorted(found, key=lambda i: (i.issuing_date, str(i.number)))

    def _notes(self) -> list[CreditNote]:
        found, _ = self.ledger.credit_notes.credit_notes(self.org, 1, 10**6)
        return sorted(found, key=lambda n: n.number)

    def _wallets(self) -> list[Wallet]:
        return [self.ledger.wallets.wallet(self.org, w) for w in self.wallet_ids]

    @staticmethod
    def _pick(items: list[Any], index: int) -> Any:
        return items[index % len(items)] if items else None

    # Rules.

    @rule()
    def bill_next_month(self) -> None:
        boundary = datetime.combine(
            add_months(self.now.date(), 1).replace(day=1), datetime.min.time(), UTC
        )
        self.now = boundary
        self._at(boundary)
        self.ledger.invoicing.run(boundary)

    @rule(index=INDEX)
    def pay(self, index: int) -> None:
        unpaid = [
            i
            for i in self._invoices()
            if i.status == "finalized" and i.payment_status != "succeeded"
        ]
        invoice = self._pick(unpaid, index)
        if invoice is not None:
            self._tick()
            self.ledger.invoicing.set_payment_status(self.org, invoice.id, "succeeded")

    @rule(index=INDEX, cents=CENTS)
    def pay_partly(self, index: int, cents: int) -> None:
        """A manual payment (Lago's POST /payments) of part or all of what is left due."""
        unpaid = [
            i
            for i in self._invoices()
            if i.status == "finalized" and i.payment_status != "succeeded"
        ]
        invoice = self._pick(unpaid, index)
        if invoice is None:
            return
        left = invoice.total_due_amount_cents - paid_by_payments_cents(
            self.ledger.billing, invoice.id
        )
        if left > 0:
            self._tick()
            self.ledger.payments.create_manual_payment(
                self.org, invoice.id, min(cents, left), "wire", None
            )

    @rule(index=INDEX)
    def payment_reversed(self, index: int) -> None:
        paid = [
            i
            for i in self._invoices()
            if i.status == "finalized"
            and i.payment_status == "succeeded"
            and i.total_refunded_amount_cents == 0
        ]
        invoice = self._pick(paid, index)
        if invoice is not None:
            self._tick()
            self.ledger.invoicing.set_payment_status(self.org, invoice.id, "failed")

    @rule(index=INDEX)
    def void_invoice(self, index: int) -> None:
        voidable = [
            i
            for i in self._invoices()
            if i.status == "finalized" and i.payment_status != "succeeded"
        ]
        invoice = self._pick(voidable, index)
        if invoice is not None:
            self._tick()
            self.ledger.invoicing.void(self.org, invoice.id, self.now)

    @rule(
        index=INDEX,
        cents=CENTS,
        destination=st.sampled_from(["credit", "refund", "offset", "mixed"]),
    )
    def credit_note(self, index: int, cents: int, destination: str) -> None:
        creditable = [
            i
            for i in self._invoices()
            if i.status == "finalized"
            and i.invoice_type != "credit"
            and any(f.amount_cents > i.credited_fee_cents.get(f.key, 0) for f in i.fees)
        ]
        invoice: Invoice | None = self._pick(creditable, index)
        if invoice is None:
            return
        fee = next(
            f for f in invoice.fees if f.amount_cents > invoice.credited_fee_cents.get(f.key, 0)
        )
        amount = min(cents, fee.amount_cents - invoice.credited_fee_cents.get(fee.key, 0))
        total = invoice.credit_note_amounts({fee.key: amount}).total_amount_cents
        refund = min(total, invoice.refundable_amount_cents) if destination == "refund" else 0
        offset = min(total, invoice.offsettable_amount_cents) if destination == "offset" else 0
        if destination == "mixed":
            offset = min(total // 2, invoice.offsettable_amount_cents)
            refund = min(total - offset, invoice.refundable_amount_cents) // 2
        self._tick()
        self.ledger.credit_notes.create(
            self.org,
            invoice.id,
            [(fee.key, amount)],
            reason="other",
            credit_amount_cents=total - refund - offset,
            refund_amount_cents=refund,
            offset_amount_cents=offset,
        )

    @rule(index=INDEX)
    def refund_paid(self, index: int) -> None:
        pending = [n for n in self._notes() if n.refund_status == "pending"]
        note = self._pick(pending, index)
        if note is not None:
            self._tick()
            self.ledger.credit_notes.set_refund_status(self.org, note.id, "succeeded")

    @rule(index=INDEX)
    def void_note(self, index: int) -> None:
        available = [
            n for n in self._notes() if n.credit_status == "available" and n.balance_amount_cents
        ]
        note = self._pick(available, index)
        if note is not None:
            self._tick()
            self.ledger.credit_notes.void(self.org, note.id)

    @rule(cents=CENTS)
    def grant(self, cents: int) -> None:
        self._tick()
        self.ledger.wallets.top_up(
            self.org, self.wallet_id, TopUpValues(granted_credits=Decimal(cents) / 100)
        )

    @rule(cents=CENTS, pay_now=st.booleans())
    def buy(self, cents: int, pay_now: bool) -> None:
        self._tick()
        [bought] = self.ledger.wallets.top_up(
            self.org, self.wallet_id, TopUpValues(paid_credits=Decimal(cents) / 100)
        )
        if pay_now:
            assert bought.invoice_id is not None
            self.ledger.invoicing.set_payment_status(self.org, bought.invoice_id, "succeeded")

    @rule(cents=CENTS)
    def void_credits(self, cents: int) -> None:
        wallet = self.ledger.wallets.wallet(self.org, self.wallet_id)
        amount = min(cents, wallet.balance_cents)
        if amount > 0:
            self._tick()
            self.ledger.wallets.top_up(
                self.org, self.wallet_id, TopUpValues(voided_credits=Decimal(amount) / 100)
            )

    @rule()
    def terminate_wallet(self) -> None:
        self._tick()
        self.ledger.wallets.terminate_wallet(self.org, self.wallet_id)
        self.wallet_id = self._new_wallet()
        self.wallet_ids.append(self.wallet_id)

    # The journal against the aggregates.

    @invariant()
    def journal_ties_out(self) -> None:
        if not hasattr(self, "ledger"):
            return
        ledger = self.ledger
        balance = ledger.journal.trial_balance(self.org, EVER[1])
        assert balance.balanced, balance.totals
        found = {line.account: line.balance_cents for line in balance.lines}
        expected = self._expected_balances()
        for account in journal.CHART:
            assert found.get(account, 0) == expected.get(account, 0), (
                account,
                found.get(account, 0),
                expected.get(account, 0),
            )
        transactions: dict[str, int] = {}
        for row in ledger.journal.rows(RowFilter(organization_id=self.org)):
            transactions[row.transaction_id] = (
                transactions.get(row.transaction_id, 0) + row.balance_cents
            )
        assert set(transactions.values()) <= {0}, transactions
        assert ledger.journal.reconcile(*EVER) == []

    def _expected_balances(self) -> dict[str, int]:
        """Debit minus credit per account, from what the aggregates say."""
        invoices, notes, wallets = self._invoices(), self._notes(), self._wallets()
        expected = dict.fromkeys(journal.CHART, 0)
        for invoice in invoices:
            if invoice.status == "draft":
                continue
            own = [n for n in notes if n.invoice_id == invoice.id]
            totals = invoice.totals
            offsets = invoice.total_offsetted_credit_note_amount_cents
            # Recorded payments bring their own amounts; marking paid brings what they left.
            payments = paid_by_payments_cents(self.ledger.billing, invoice.id)
            cash_in = payments
            if invoice.payment_status == "succeeded":
                cash_in = max(payments, totals.total_amount_cents - offsets)
            expected[journal.CASH] += cash_in
            if invoice.status == "voided":
                assert invoice.payment_status != "succeeded", invoice.id
                # A void gives the wallets their credits back (§8.8, ADR 0020).
                recredited = sum(
                    t.amount_cents
                    for wallet in wallets
                    for t in wallet.entries()
                    if t.kind == "recredited" and t.invoice_id == invoice.id
                )
                expected[journal.RECEIVABLES] += (
                    sum(n.credit_amount_cents + n.refund_amount_cents for n in own)
                    - totals.credit_notes_amount_cents
                    - totals.prepaid_credit_amount_cents
                    + recredited
                    - payments
                )
                continue
            expected[journal.RECEIVABLES] += invoice.total_due_amount_cents - (
                0 if invoice.payment_status == "succeeded" else payments
            )
            if invoice.invoice_type == "credit":
                continue
            credited = sum(invoice.credited_fee_cents.values())
            expected[journal.REVENUE] -= totals.fees_amount_cents - credited
            expected[journal.VAT_PAYABLE] -= totals.taxes_amount_cents - sum(
                n.taxes_amount_cents for n in own
            )
        for note in notes:
            expected[journal.CUSTOMER_CREDIT] -= note.balance_amount_cents
            if note.refund_status == "succeeded":
                expected[journal.CASH] -= note.refund_amount_cents
            elif note.refund_amount_cents:
                expected[journal.REFUNDS_PAYABLE] -= note.refund_amount_cents
            if note.credit_status == "voided":
                expected[journal.OTHER_INCOME] -= (
                    note.credit_amount_cents - note.consumed_amount_cents
                )
        for wallet in wallets:
            kinds = {t.transaction_id: t.kind for t in wallet.entries()}
            for transaction in wallet.entries():
                if transaction.kind == "granted":
                    expected[journal.WALLET_GRANTED] -= transaction.remaining_cents
                    expected[journal.PROMOTIONAL_EXPENSE] += transaction.amount_cents
                elif transaction.kind == "purchased":
                    assert transaction.invoice_id is not None
                    credit_invoice = self.ledger.invoicing.invoice(self.org, transaction.invoice_id)
                    if transaction.status == "settled":
                        expected[journal.WALLET_PAID] -= transaction.remaining_cents
                        if credit_invoice.status == "voided":
                            # Credits settled, then their invoice voided: given without pay.
                            expected[journal.TOP_UPS_AWAITING_PAYMENT] += transaction.amount_cents
                    elif credit_invoice.status == "finalized":
                        expected[journal.TOP_UPS_AWAITING_PAYMENT] -= transaction.amount_cents
                elif transaction.kind in ("voided", "expired"):
                    for lot_id, cents in transaction.lots:
                        if kinds[lot_id] == "granted":
                            expected[journal.PROMOTIONAL_EXPENSE] -= cents
                        else:
                            expected[journal.OTHER_INCOME] -= cents
            assert wallet.balance_cents == -(
                sum(
                    -t.remaining_cents
                    for t in wallet.entries()
                    if t.transaction_type == "inbound" and t.status == "settled"
                )
            )
        return expected


JournalMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestJournalMachine = JournalMachine.TestCase
