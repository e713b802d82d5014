"""The journal's endpoints (entries, trial balance, reports) as JSON and CSV, and Lago's analytics
with the 1.55.0 client's models: whole bodies and error codes, on a fixed clock."""

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from lago_python_client.models.gross_revenue import GrossRevenuesResponse
from lago_python_client.models.invoice_collection import InvoiceCollectionsResponse
from lago_python_client.models.invoiced_usage import InvoicedUsagesResponse
from lago_python_client.models.mrr import MrrsResponse
from lago_python_client.models.overdue_balance import OverdueBalancesResponse
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from application.wallets import TopUpValues, WalletValues
from domain.invoice import Invoice
from tests.conftest import Tenant

Client = TestClient[Litestar]
MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


@pytest.fixture
def invoices(ledger: Ledger, tenant: Tenant) -> list[Invoice]:
    """acme (FR) on 30.00 a month in advance + 20 % VAT from March 1: March's invoice (36.00)
    paid, 5.00 of credits granted March 15 paying part of April's (31.00 left); now May 15."""
    billing = ledger.billing
    org = tenant.organization_id
    at(ledger, MARCH_1)
    billing.create_tax(org, "vat", {"name": "VAT", "rate": "20", "applied_to_organization": True})
    billing.create_plan(
        org,
        "advance",
        {
            "name": "Advance",
            "interval": "monthly",
            "amount_cents": 3_000,
            "amount_currency": "EUR",
            "pay_in_advance": True,
            "charges": [],
        },
    )
    billing.upsert_customer(org, "acme", {"country": "FR", "currency": "EUR"})
    billing.create_subscription(
        org, "sub_1", external_customer_id="acme", plan_code="advance", subscription_at=MARCH_1
    )
    [march] = ledger.invoicing.run(MARCH_1)
    at(ledger, datetime(2026, 3, 15, tzinfo=UTC))
    wallet = ledger.wallets.create_wallet(
        org,
        WalletValues(external_customer_id="acme", currency="EUR", rate_amount=Decimal(1), code="w"),
    )
    ledger.wallets.top_up(org, wallet.id, TopUpValues(granted_credits=Decimal(5)))
    at(ledger, APRIL_1)
    april = ledger.invoicing.run(APRIL_1)[-1]
    ledger.invoicing.set_payment_status(org, march.id, "succeeded")
    at(ledger, datetime(2026, 5, 15, tzinfo=UTC))
    return [march, april]


def get(client: Client, tenant: Tenant, path: str, **headers: str) -> Any:
    response = client.get(f"/api/v1/{path}", headers={**tenant.headers, **headers})
    assert response.status_code == 200, response.text
    return response


def rows(response: Any) -> list[list[str]]:
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.text)))


def test_journal_entries_page_in_posting_order_and_filter(
    client: Client, tenant: Tenant, invoices: list[Invoice]
) -> None:
    march = invoices[0]
    body = get(client, tenant, "journal/entries?per_page=5").json()
    assert body["meta"] == {
        "current_page": 1,
        "next_page": 2,
        "prev_page": None,
        "total_pages": 3,
        "total_count": 12,
    }
    assert body["journal_entries"][0] == {
        "transaction_id": f"{march.id}:{march.version}",
        "line": 1,
        "kind": "invoice_finalized",
        "date": "2026-03-01",
        "account": "1100",
        "account_name": "Accounts receivable",
        "debit_amount_cents": 3_600,
        "credit_amount_cents": 0,
        "currency": "EUR",
        "reference": march.number,
        "lago_customer_id": str(march.customer_id),
        "external_customer_id": "acme",
        "lago_invoice_id": str(march.id),
        "lago_credit_note_id": None,
        "lago_wallet_id": None,
        "product_line": None,
        "billable_metric_code": None,
        "fee_type": None,
        "country": "FR",
        "tax_code": None,
        "tax_rate": None,
        "taxable_base_amount_cents": None,
    }
    vat = get(client, tenant, "journal/entries?account=2200").json()["journal_entries"]
    assert [
        (e["credit_amount_cents"], e["tax_rate"], e["taxable_base_amount_cents"]) for e in vat
    ] == [
        (600, "20", 3_000),
        (600, "20", 3_000),
    ]
    april = get(client, tenant, "journal/entries?from=2026-04-01&to=2026-04-30").json()
    assert {e["kind"] for e in april["journal_entries"]} == {
        "invoice_finalized",
        "credits_consumed",
    }
    paid = get(client, tenant, f"journal/entries?kind=payment_received&invoice_id={march.id}")
    assert [e["account"] for e in paid.json()["journal_entries"]] == ["1200", "1100"]


def test_journal_entries_as_csv_for_accounting_software(
    client: Client, tenant: Tenant, invoices: list[Invoice]
) -> None:
    march = invoices[0]
    by_header = rows(get(client, tenant, "journal/entries", accept="text/csv"))
    assert by_header == rows(get(client, tenant, "journal/entries?format=csv"))
    assert by_header[0] == ["account", "debit", "credit", "currency", "reference", "date"]
    assert by_header[1:4] == [
        ["1100", "36.00", "0.00", "EUR", march.number, "2026-03-01"],
        ["4000", "0.00", "30.00", "EUR", march.number, "2026-03-01"],
        ["2200", "0.00", "6.00", "EUR", march.number, "2026-03-01"],
    ]
    assert len(by_header) == 13  # Every entry: CSV is not paged.


def test_the_trial_balance_at_a_date(
    client: Client, tenant: Tenant, invoices: list[Invoice]
) -> None:
    # March's payment is recorded today (its entries are dated when recorded): not by April 30.
    body = get(client, tenant, "journal/trial_balance?at=2026-04-30").json()
    assert body == {
        "trial_balance": {
            "at": "2026-04-30",
            "balanced": True,
            "lines": [
                line("1100", "Accounts receivable", "asset", 7_200, 500),
                line("2200", "VAT payable", "liability", 0, 1_200),
                line("2310", "Wallet credits, granted", "liability", 500, 500),
                line("4000", "Revenue", "revenue", 0, 6_000),
                line("6100", "Promotional credits expense", "expense", 500, 0),
            ],
            "totals": [
                {"currency": "EUR", "debit_amount_cents": 8_200, "credit_amount_cents": 8_200}
            ],
        }
    }
    march_only = get(client, tenant, "journal/trial_balance?at=2026-03-01&format=csv")
    assert rows(march_only) == [
        [
            "account",
            "account_name",
            "account_type",
            "currency",
            "debit_amount_cents",
            "credit_amount_cents",
            "balance_amount_cents",
        ],
        ["1100", "Accounts receivable", "asset", "EUR", "3600", "0", "3600"],
        ["2200", "VAT payable", "liability", "EUR", "0", "600", "-600"],
        ["4000", "Revenue", "revenue", "EUR", "0", "3000", "-3000"],
    ]
    today = get(client, tenant, "journal/trial_balance").json()["trial_balance"]
    assert (today["at"], today["balanced"]) == ("2026-05-15", True)


def line(account: str, name: str, kind: str, debit: int, credit: int) -> dict[str, Any]:
    return {
        "account": account,
        "account_name": name,
        "account_type": kind,
        "currency": "EUR",
        "debit_amount_cents": debit,
        "credit_amount_cents": credit,
        "balance_amount_cents": debit - credit,
    }


def test_revenue_and_vat_reports(client: Client, tenant: Tenant, invoices: list[Invoice]) -> None:
    period = "from=2026-03-01&to=2026-04-30"
    assert get(client, tenant, f"reports/revenue?{period}").json() == {
        "revenue": [
            {"currency": "EUR", "amount_cents": 3_000, "month": "2026-03"},
            {"currency": "EUR", "amount_cents": 3_000, "month": "2026-04"},
        ]
    }
    grouped = get(
        client, tenant, f"reports/revenue?{period}&group_by=product_line,customer,country"
    )
    assert grouped.json() == {
        "revenue": [
            {
                "currency": "EUR",
                "amount_cents": 6_000,
                "product_line": "subscription",
                "external_customer_id": "acme",
                "country": "FR",
            }
        ]
    }
    assert rows(
        get(client, tenant, f"reports/revenue?{period}&group_by=country,month&format=csv")
    ) == [
        ["country", "month", "currency", "amount_cents"],
        ["FR", "2026-03", "EUR", "3000"],
        ["FR", "2026-04", "EUR", "3000"],
    ]
    assert get(client, tenant, f"reports/vat?{period}").json() == {
        "vat": [
            {
                "country": "FR",
                "tax_code": "vat",
                "tax_rate": "20",
                "currency": "EUR",
                "taxable_base_amount_cents": 6_000,
                "taxes_amount_cents": 1_200,
            }
        ]
    }
    assert rows(get(client, tenant, f"reports/vat?{period}", accept="text/csv"))[1] == [
        "FR",
        "vat",
        "20",
        "EUR",
        "6000",
        "1200",
    ]


def test_receivables_ageing_and_wallet_liability(
    client: Client, tenant: Tenant, invoices: list[Invoice]
) -> None:
    april = invoices[1]
    ageing = get(client, tenant, "reports/receivables_ageing?at=2026-04-30").json()
    assert ageing == {
        "receivables_ageing": [
            {
                "external_customer_id": "acme",
                "invoice_number": None,
                "currency": "EUR",
                "current_amount_cents": 0,
                "days_1_30_amount_cents": 3_100,
                "days_31_60_amount_cents": 3_600,
                "days_61_90_amount_cents": 0,
                "days_over_90_amount_cents": 0,
                "total_amount_cents": 6_700,
            }
        ]
    }
    # By 2030, March's payment (recorded today) is in: only April's invoice is owed.
    later = "reports/receivables_ageing?group_by=invoice&format=csv&at=2030-01-01"
    assert [r[1] for r in rows(get(client, tenant, later))] == ["invoice_number", april.number]
    liability = get(client, tenant, "reports/wallet_liability?at=2026-03-31&group_by=wallet")
    [wallet] = liability.json()["wallet_liability"]
    assert {k: v for k, v in wallet.items() if k != "lago_wallet_id"} == {
        "external_customer_id": "acme",
        "currency": "EUR",
        "paid_amount_cents": 0,
        "granted_amount_cents": 500,
        "total_amount_cents": 500,
        "awaiting_payment_amount_cents": 0,
    }
    assert get(client, tenant, "reports/wallet_liability").json() == {"wallet_liability": []}


def test_lagos_analytics_with_plural_roots_and_no_meta(
    client: Client, tenant: Tenant, invoices: list[Invoice]
) -> None:
    april = invoices[1]
    gross = get(client, tenant, "analytics/gross_revenue").json()
    assert gross == {
        "gross_revenues": [
            {
                "month": "2026-03-01T00:00:00.000Z",
                "invoices_count": 1,
                "amount_cents": 3_600,
                "currency": "EUR",
            },
            {
                "month": "2026-04-01T00:00:00.000Z",
                "invoices_count": 1,
                "amount_cents": 3_100,
                "currency": "EUR",
            },
        ]
    }
    GrossRevenuesResponse.parse_obj(gross["gross_revenues"])
    assert get(client, tenant, "analytics/gross_revenue?months=1").json() == {"gross_revenues": []}
    assert get(client, tenant, "analytics/gross_revenue?external_customer_id=x").json() == {
        "gross_revenues": []
    }
    mrr = get(client, tenant, "analytics/mrr?currency=EUR").json()
    assert mrr == {
        "mrrs": [
            {"month": "2026-03-01T00:00:00.000Z", "amount_cents": 3_600, "currency": "EUR"},
            {"month": "2026-04-01T00:00:00.000Z", "amount_cents": 3_600, "currency": "EUR"},
        ]
    }
    MrrsResponse.parse_obj(mrr["mrrs"])
    overdue = get(client, tenant, "analytics/overdue_balance").json()
    assert overdue == {
        "overdue_balances": [
            {
                "amount_cents": 3_100,
                "currency": "EUR",
                "month": "2026-04-01T00:00:00.000Z",
                "lago_invoice_ids": [str(april.id)],
            }
        ]
    }
    OverdueBalancesResponse.parse_obj(overdue["overdue_balances"])
    collection = get(client, tenant, "analytics/invoice_collection").json()
    assert collection == {
        "invoice_collections": [
            {
                "amount_cents": 3_600,
                "month": "2026-03-01T00:00:00.000Z",
                "invoices_count": 1,
                "currency": "EUR",
                "payment_status": "succeeded",
            },
            {
                "amount_cents": 3_100,
                "month": "2026-04-01T00:00:00.000Z",
                "invoices_count": 1,
                "currency": "EUR",
                "payment_status": "pending",
            },
        ]
    }
    InvoiceCollectionsResponse.parse_obj(collection["invoice_collections"])
    usage = get(client, tenant, "analytics/invoiced_usage").json()
    assert usage == {"invoiced_usages": []}  # A plan without charges bills no usage.
    InvoicedUsagesResponse.parse_obj(usage["invoiced_usages"])


@pytest.mark.parametrize(
    ("path", "field", "reason"),
    [
        ("reports/revenue?to=2026-04-30", "from", "value_is_mandatory"),
        ("reports/vat?from=2026-04-01", "to", "value_is_mandatory"),
        ("reports/revenue?from=2026-05-01&to=2026-04-30", "to", "invalid_date"),
        ("reports/revenue?from=2026-04-01&to=2026-04-31", "to", "invalid_date"),
        (
            "reports/revenue?from=2026-04-01&to=2026-04-30&group_by=plan",
            "group_by",
            "value_is_invalid",
        ),
        ("reports/receivables_ageing?group_by=wallet", "group_by", "value_is_invalid"),
        ("reports/wallet_liability?at=yesterday", "at", "invalid_date"),
        ("journal/entries?account=9999", "account", "value_is_invalid"),
        ("journal/entries?invoice_id=nope", "invoice_id", "value_is_invalid"),
        ("analytics/mrr?months=-1", "months", "value_is_invalid"),
    ],
)
def test_bad_parameters_are_validation_errors(
    client: Client, tenant: Tenant, path: str, field: str, reason: str
) -> None:
    response = client.get(f"/api/v1/{path}", headers=tenant.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["code"], body["error_details"]) == ("validation_errors", {field: [reason]})


def test_another_organization_sees_an_empty_journal(
    client: Client, ledger: Ledger, invoices: list[Invoice]
) -> None:
    _, other_key = ledger.billing.create_organization("other")
    headers = {"Authorization": f"Bearer {other_key}"}
    response = client.get("/api/v1/journal/entries", headers=headers)
    assert response.json()["journal_entries"] == []
    assert client.get("/api/v1/analytics/mrr", headers=headers).json() == {"mrrs": []}
    assert client.get("/api/v1/journal/trial_balance").status_code == 401
