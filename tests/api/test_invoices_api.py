"""Invoices through the HTTP API on a fixed clock: shapes, transitions, audit, history, PDF."""

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from lago_python_client.models.invoice import InvoiceResponse
from litestar import Litestar
from litestar.testing import TestClient

from adapters.stores import Ledger
from api.pdf import invoice_pdf
from api.problems import PROBLEM_TYPE_BASE
from domain.invoice import Invoice, document_prefix
from tests.conftest import Tenant

Client = TestClient[Litestar]
MARCH_10 = datetime(2026, 3, 10, tzinfo=UTC)
MARCH_20 = datetime(2026, 3, 20, tzinfo=UTC)
APRIL_1 = datetime(2026, 4, 1, tzinfo=UTC)
APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)
ACME = {
    "external_id": "acme",
    "name": "Acme",
    "legal_name": "Acme SAS",
    "address_line1": "1 rue de la Paix",
    "zipcode": "75002",
    "city": "Paris",
    "country": "FR",
    "tax_identification_number": "FR40303265045",
    "currency": "EUR",
}


def at(ledger: Ledger, instant: datetime) -> None:
    ledger.billing.now = lambda: instant


@pytest.fixture
def catalog(client: Client, tenant: Tenant, ledger: Ledger) -> Iterator[Client]:
    """Tokens by model, 20 % VAT for the organization, a €30 plan in arrears with a tokens charge
    (€3 per million, €10 per million on the large model), customer acme with an address."""
    at(ledger, MARCH_10)
    headers = tenant.headers
    metric = client.post(
        "/api/v1/billable_metrics",
        json={
            "billable_metric": {
                "name": "Tokens",
                "code": "tokens",
                "aggregation_type": "sum_agg",
                "field_name": "tokens",
                "filters": [{"key": "model", "values": ["small", "large"]}],
            }
        },
        headers=headers,
    ).json()["billable_metric"]
    client.post(
        "/api/v1/taxes",
        json={"tax": {"code": "vat", "name": "VAT", "rate": "20", "applied_to_organization": True}},
        headers=headers,
    )
    plan = client.post(
        "/api/v1/plans",
        json={
            "plan": {
                "name": "Basic",
                "code": "basic",
                "interval": "monthly",
                "amount_cents": 3000,
                "amount_currency": "EUR",
                "pay_in_advance": False,
                "charges": [
                    {
                        "billable_metric_id": metric["lago_id"],
                        "charge_model": "standard",
                        "properties": {"amount": "0.000003"},
                        "filters": [
                            {
                                "values": {"model": ["large"]},
                                "properties": {"amount": "0.00001"},
                                "invoice_display_name": "Large model",
                            }
                        ],
                    }
                ],
            }
        },
        headers=headers,
    )
    assert plan.status_code == 200, plan.text
    yield client


def add_customer(client: Client, tenant: Tenant, **fields: Any) -> None:
    response = client.post(
        "/api/v1/customers", json={"customer": {**ACME, **fields}}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text


def subscribe(
    client: Client, tenant: Tenant, external_id: str = "sub_1", customer: str = "acme"
) -> None:
    response = client.post(
        "/api/v1/subscriptions",
        json={
            "subscription": {
                "external_customer_id": customer,
                "plan_code": "basic",
                "external_id": external_id,
                "subscription_at": "2026-03-10T00:00:00Z",
            }
        },
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text


def ingest(
    client: Client, tenant: Tenant, transaction_id: str, tokens: int, model: str, when: datetime
) -> None:
    event = {
        "transaction_id": transaction_id,
        "external_subscription_id": "sub_1",
        "code": "tokens",
        "timestamp": int(when.timestamp()),
        "properties": {"tokens": tokens, "model": model},
    }
    response = client.post("/api/v1/events", json={"event": event}, headers=tenant.headers)
    assert response.status_code == 200, response.text


def bill(ledger: Ledger, now: datetime) -> list[str]:
    at(ledger, now)
    return [str(invoice.id) for invoice in ledger.invoicing.run(now)]


@pytest.fixture
def march(catalog: Client, tenant: Tenant, ledger: Ledger) -> str:
    """March's invoice: €30 from March 10 (22 of 31 days), 1.5M small and 100k large tokens."""
    add_customer(catalog, tenant)
    subscribe(catalog, tenant)
    at(ledger, MARCH_20)
    ingest(catalog, tenant, "t1", 1_500_000, "small", MARCH_20)
    ingest(catalog, tenant, "t2", 100_000, "large", MARCH_20)
    [invoice_id] = bill(ledger, APRIL_1)
    return invoice_id


def get(client: Client, tenant: Tenant, path: str, **params: Any) -> Any:
    return client.get(f"/api/v1/invoices{path}", params=params, headers=tenant.headers)


def prefix(ledger: Ledger, tenant: Tenant) -> str:
    organization = ledger.billing.organization(tenant.organization_id)
    return document_prefix(organization.name, organization.id)


def test_an_invoice_has_lagos_shape_and_the_hand_computed_amounts(
    catalog: Client, march: str, tenant: Tenant, ledger: Ledger
) -> None:
    body = get(catalog, tenant, f"/{march}").json()["invoice"]
    InvoiceResponse.parse_obj(body)  # Every field the official client requires is there.
    # 30.00 × 22/31 = 21.29; 1.5M × 0.000003 = 4.50; 100k × 0.00001 = 1.00: 26.79.
    # VAT 20 % on 26.79 = 5.358 → 5.36, split 0.90 / 0.20 / 4.26 by largest remainder.
    assert {k: body[k] for k in AMOUNT_FIELDS} == {
        "fees_amount_cents": 2679,
        "coupons_amount_cents": 0,
        "taxes_amount_cents": 536,
        "credit_notes_amount_cents": 0,
        "progressive_billing_credit_amount_cents": 0,
        "sub_total_excluding_taxes_amount_cents": 2679,
        "sub_total_including_taxes_amount_cents": 3215,
        "total_amount_cents": 3215,
        "total_due_amount_cents": 3215,
        "total_paid_amount_cents": 0,
        "prepaid_credit_amount_cents": 0,
    }
    assert (body["number"], body["sequential_id"]) == (f"{prefix(ledger, tenant)}-202604-001", 1)
    assert (body["status"], body["payment_status"], body["invoice_type"]) == (
        "finalized",
        "pending",
        "subscription",
    )
    assert (body["issuing_date"], body["payment_due_date"], body["version_number"]) == (
        "2026-04-01",
        "2026-04-01",
        4,
    )
    assert body["file_url"] == f"http://testserver.local/api/v1/invoices/{march}/pdf"
    assert body["customer"]["external_id"] == "acme"
    [period] = body["billing_periods"]
    assert {
        k: v for k, v in period.items() if k not in ("lago_subscription_id", "lago_plan_id")
    } == {
        "external_subscription_id": "sub_1",
        "subscription_from_datetime": "2026-03-10T00:00:00Z",
        "subscription_to_datetime": "2026-03-31T23:59:59Z",
        "charges_from_datetime": "2026-03-10T00:00:00Z",
        "charges_to_datetime": "2026-03-31T23:59:59Z",
        "invoicing_reason": "subscription_periodic",
    }
    [applied] = body["applied_taxes"]
    assert (applied["tax_code"], applied["tax_name"], applied["amount_cents"]) == (
        "vat",
        "VAT",
        536,
    )
    assert (applied["fees_amount_cents"], applied["lago_invoice_id"]) == (2679, march)
    assert re.search(r'"tax_rate":20[,}]', get(catalog, tenant, f"/{march}").text)  # A number.
    fees = [
        (
            f["item"]["type"],
            f["item"]["code"],
            f["item"]["filters"],
            f["units"],
            f["precise_unit_amount"],
            f["amount_cents"],
            f["taxes_amount_cents"],
            f["total_amount_cents"],
        )
        for f in body["fees"]
    ]
    assert fees == [
        ("charge", "tokens", None, "1500000", "0.000003", 450, 90, 540),
        ("charge", "tokens", {"model": ["large"]}, "100000", "0.00001", 100, 20, 120),
        ("subscription", "basic", None, "1", "21.29032258064516129", 2129, 426, 2555),
    ]
    large = body["fees"][1]
    assert large["item"]["filter_invoice_display_name"] == "Large model"
    assert large["lago_charge_filter_id"] is not None
    assert (large["from_date"], large["to_date"]) == (
        "2026-03-10T00:00:00Z",
        "2026-03-31T23:59:59Z",
    )
    assert len({f["lago_id"] for f in body["fees"]}) == 3


AMOUNT_FIELDS = (
    "fees_amount_cents",
    "coupons_amount_cents",
    "taxes_amount_cents",
    "credit_notes_amount_cents",
    "progressive_billing_credit_amount_cents",
    "sub_total_excluding_taxes_amount_cents",
    "sub_total_including_taxes_amount_cents",
    "total_amount_cents",
    "total_due_amount_cents",
    "total_paid_amount_cents",
    "prepaid_credit_amount_cents",
)


def test_the_list_applies_lagos_filters_and_pages(
    catalog: Client, march: str, tenant: Tenant, ledger: Ledger
) -> None:
    [_, april] = bill(ledger, MAY_1)  # March's again (the same invoice), then April's.
    listed = get(catalog, tenant, "", per_page=1).json()
    assert [i["lago_id"] for i in listed["invoices"]] == [april]  # Newest first.
    assert listed["meta"] == {
        "current_page": 1,
        "next_page": 2,
        "prev_page": None,
        "total_pages": 2,
        "total_count": 2,
    }
    assert listed["invoices"][0]["fees"] is None  # Lago's list leaves out the fees.

    def ids(**params: Any) -> list[str]:
        response = get(catalog, tenant, "", **params)
        assert response.status_code == 200, response.text
        return [i["lago_id"] for i in response.json()["invoices"]]

    assert ids(issuing_date_from="2026-05-01") == [april]
    assert ids(issuing_date_to="2026-04-30") == [march]
    assert ids(**{"statuses[]": ["draft"]}) == []
    assert ids(status="finalized", external_customer_id="acme") == [april, march]
    assert ids(external_customer_id="nobody") == []
    assert ids(currency="USD") == [] and ids(invoice_type="one_off") == []
    catalog.put(
        f"/api/v1/invoices/{march}",
        json={"invoice": {"payment_status": "succeeded"}},
        headers=tenant.headers,
    )
    assert ids(**{"payment_statuses[]": ["succeeded"]}) == [march]
    assert ids(payment_status="pending") == [april]
    bad = get(catalog, tenant, "", status="paid")
    assert (bad.status_code, bad.json()["error_details"]) == (422, {"status": ["value_is_invalid"]})
    bad_date = get(catalog, tenant, "", issuing_date_from="May 1st")
    assert bad_date.json()["error_details"] == {"issuing_date_from": ["invalid_date"]}


def test_a_manual_payment_settles_the_invoice_and_bad_updates_are_refused(
    catalog: Client, march: str, tenant: Tenant
) -> None:
    def update(body: Any) -> Any:
        return catalog.put(f"/api/v1/invoices/{march}", json=body, headers=tenant.headers)

    paid = update({"invoice": {"payment_status": "succeeded", "metadata": None}})
    assert paid.status_code == 200, paid.text
    invoice = paid.json()["invoice"]
    assert (invoice["payment_status"], invoice["total_due_amount_cents"]) == ("succeeded", 0)
    assert invoice["total_paid_amount_cents"] == 3215
    assert update({"invoice": {"payment_status": "paid"}}).json()["error_details"] == {
        "payment_status": ["value_is_invalid"]
    }
    missing = update({"payment_status": "succeeded"})
    assert (missing.status_code, missing.json()["error"]) == (
        400,
        "BadRequest: param is missing or the value is empty: invoice",
    )
    metadata = update({"invoice": {"metadata": [{"key": "po", "value": "42"}]}})
    assert metadata.json()["error_details"] == {"metadata": ["unsupported_field"]}
    # A paid invoice cannot be voided (§8.8).
    voided = catalog.post(f"/api/v1/invoices/{march}/void", headers=tenant.headers)
    assert (voided.status_code, voided.json()["code"]) == (405, "not_voidable")


def test_void_takes_lagos_options_and_retry_payment_needs_a_failed_payment(
    catalog: Client, march: str, tenant: Tenant
) -> None:
    path = f"/api/v1/invoices/{march}"
    pending = catalog.post(f"{path}/retry_payment", headers=tenant.headers)
    assert (pending.status_code, pending.json()["code"]) == (405, "invalid_status")
    catalog.put(path, json={"invoice": {"payment_status": "failed"}}, headers=tenant.headers)
    retried = catalog.post(f"{path}/retry_payment", headers=tenant.headers)
    assert (retried.status_code, retried.content) == (200, b"")  # Lago's `head :ok`.
    options = {"generate_credit_note": False, "refund_amount": 0, "credit_amount": 0}
    voided = catalog.post(f"{path}/void", json=options, headers=tenant.headers)
    assert voided.status_code == 200, voided.text
    assert (voided.json()["invoice"]["status"], voided.json()["invoice"]["voided_at"]) == (
        "voided",
        "2026-04-01T00:00:00Z",
    )
    again = catalog.post(f"{path}/void", headers=tenant.headers)
    assert (again.status_code, again.json()["code"]) == (405, "not_voidable")
    after = catalog.post(f"{path}/retry_payment", headers=tenant.headers)
    assert after.json()["code"] == "invalid_status"  # Voided, even though its payment failed.
    unknown = catalog.post(f"{path}/void", json={"refund": 1}, headers=tenant.headers)
    assert unknown.json()["error_details"] == {"refund": ["unsupported_field"]}


def test_a_draft_in_its_grace_period_is_refreshed_then_finalized(
    catalog: Client, tenant: Tenant, ledger: Ledger
) -> None:
    add_customer(catalog, tenant, billing_configuration={"invoice_grace_period": 3})
    subscribe(catalog, tenant)
    at(ledger, MARCH_20)
    ingest(catalog, tenant, "t1", 1_000_000, "small", MARCH_20)
    [draft_id] = bill(ledger, APRIL_1)
    path = f"/api/v1/invoices/{draft_id}"
    draft = get(catalog, tenant, f"/{draft_id}").json()["invoice"]
    InvoiceResponse.parse_obj(draft)
    assert (draft["status"], draft["number"], draft["sequential_id"]) == (
        "draft",
        f"{prefix(ledger, tenant)}-DRAFT",
        None,
    )
    assert (draft["fees_amount_cents"], draft["file_url"]) == (2129 + 300, None)
    for refused, status, code in (
        ("download", 404, "invoice_not_found"),  # Lago downloads finalized invoices only.
        ("retry_payment", 405, "invalid_status"),
    ):
        response = catalog.post(f"{path}/{refused}", headers=tenant.headers)
        assert (response.status_code, response.json()["code"]) == (status, code), refused
    assert catalog.get(f"{path}/pdf", headers=tenant.headers).json()["code"] == "invoice_not_found"
    on_draft = catalog.put(
        path, json={"invoice": {"payment_status": "succeeded"}}, headers=tenant.headers
    )
    assert (on_draft.status_code, on_draft.json()["code"]) == (
        405,
        "payment_status_update_on_draft_invoice",
    )

    # Usage of March that arrives during the grace period is in the draft once refreshed.
    at(ledger, APRIL_2)
    ingest(catalog, tenant, "t2", 1_000_000, "small", datetime(2026, 3, 31, 23, tzinfo=UTC))
    refreshed = catalog.put(f"{path}/refresh", headers=tenant.headers)
    assert refreshed.status_code == 200, refreshed.text
    assert (
        refreshed.json()["invoice"]["status"],
        refreshed.json()["invoice"]["fees_amount_cents"],
    ) == (
        "draft",
        2129 + 600,
    )
    finalized = catalog.put(f"{path}/finalize", headers=tenant.headers)
    assert finalized.status_code == 200, finalized.text
    invoice = finalized.json()["invoice"]
    # Numbered at finalization, and issued that day (the grace period moved it).
    assert (invoice["status"], invoice["number"], invoice["issuing_date"]) == (
        "finalized",
        f"{prefix(ledger, tenant)}-202604-001",
        "2026-04-02",
    )
    assert invoice["total_amount_cents"] == 2729 + 546
    again = catalog.put(f"{path}/finalize", headers=tenant.headers)
    assert (again.status_code, again.json()["code"]) == (404, "invoice_not_found")
    unchanged = catalog.put(f"{path}/refresh", headers=tenant.headers)
    assert unchanged.json()["invoice"]["number"] == invoice["number"]
    history = get(catalog, tenant, f"/{draft_id}/history").json()
    assert [
        (v["version"], v["invoice"]["status"], v["invoice"]["fees_amount_cents"])
        for v in history["invoice_versions"]
    ] == [
        (1, "draft", 2429),
        (2, "draft", 2729),
        (3, "finalized", 2729),
    ]
    assert history["meta"]["total_count"] == 3


def test_the_history_shows_the_invoice_at_each_version(
    catalog: Client, march: str, tenant: Tenant
) -> None:
    catalog.put(
        f"/api/v1/invoices/{march}",
        json={"invoice": {"payment_status": "succeeded"}},
        headers=tenant.headers,
    )
    response = get(catalog, tenant, f"/{march}/history", per_page=2)
    assert response.status_code == 200, response.text
    body = response.json()
    versions = body["invoice_versions"]
    assert [v["version"] for v in versions] == [1, 2]
    first, second = (v["invoice"] for v in versions)
    assert (first["status"], first["number"].endswith("-DRAFT")) == ("draft", True)
    assert (second["status"], second["payment_status"]) == ("finalized", "pending")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v["recorded_at"]) for v in versions)
    assert body["meta"]["total_count"] == 3
    last = get(catalog, tenant, f"/{march}/history", page=2, per_page=2).json()
    assert [v["invoice"]["payment_status"] for v in last["invoice_versions"]] == ["succeeded"]


def test_the_audit_matches_until_the_usage_log_is_tampered_with(
    catalog: Client, march: str, tenant: Tenant, ledger: Ledger
) -> None:
    audit = get(catalog, tenant, f"/{march}/audit").json()["invoice_audit"]
    assert (audit["result"], audit["differences"], audit["watermark"]) == ("match", [], 2)
    assert re.fullmatch(r"[0-9a-f]{64}", audit["content_hash"])
    assert [(p["external_subscription_id"], p["plan_version"]) for p in audit["plan_versions"]] == [
        ("sub_1", 1)
    ]
    assert audit["fees_amount_cents"] == audit["recomputed_fees_amount_cents"] == 2679
    assert len(audit["recomputed_fees"]) == 3
    # A test-only rewrite of a stored event: 1.5M small tokens become 2M.
    records = ledger.usage._records  # type: ignore[attr-defined]
    event = records[0].event
    records[0] = replace(
        records[0], event=replace(event, properties={**event.properties, "tokens": "2000000"})
    )
    tampered = get(catalog, tenant, f"/{march}/audit").json()["invoice_audit"]
    assert tampered["result"] == "mismatch"
    assert tampered["content_hash"] == audit["content_hash"]  # The invoice itself is intact.
    [difference] = tampered["differences"]
    assert (
        difference["lago_fee_id"]
        == get(catalog, tenant, f"/{march}").json()["invoice"]["fees"][0]["lago_id"]
    )
    assert {k: difference["changes"][k] for k in ("units", "amount_cents")} == {
        "units": {"stored": "1500000", "recomputed": "2000000"},
        "amount_cents": {"stored": 450, "recomputed": 600},
    }
    assert tampered["recomputed_fees_amount_cents"] == 2829


def test_download_points_at_a_pdf_with_what_an_eu_invoice_shows(
    catalog: Client, march: str, tenant: Tenant, ledger: Ledger
) -> None:
    downloaded = catalog.post(f"/api/v1/invoices/{march}/download", headers=tenant.headers)
    assert downloaded.status_code == 200, downloaded.text
    file_url = downloaded.json()["invoice"]["file_url"]
    assert file_url.endswith(f"/api/v1/invoices/{march}/pdf")
    response = catalog.get(file_url, headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    number = f"{prefix(ledger, tenant)}-202604-001"
    assert response.headers["content-disposition"] == f'inline; filename="{number}.pdf"'
    text = pdf_text(response.content)
    for shown in (
        number,
        "Issue date",
        "2026-04-01",
        "2026-03-10 to 2026-03-31",  # Supply period.
        "acme",  # Seller: the organization.
        "Acme SAS",
        "75002 Paris",
        "VAT number: FR40303265045",
        "Tokens - Large model",
        "0.000003",
        "VAT 20% on 26.79 EUR",
        "5.36 EUR",
        "32.15 EUR",  # The total.
    ):
        assert shown in text, shown
    assert "Reverse charge" not in text
    assert catalog.get(file_url).status_code == 401  # The PDF needs the API key too.


def test_a_reverse_charged_invoice_says_so(catalog: Client, tenant: Tenant, ledger: Ledger) -> None:
    catalog.post(
        "/api/v1/taxes",
        json={"tax": {"code": "lago_eu_reverse_charge", "name": "Reverse charge", "rate": "0"}},
        headers=tenant.headers,
    )
    add_customer(catalog, tenant, country="DE", tax_codes=["lago_eu_reverse_charge"])
    subscribe(catalog, tenant)
    [invoice_id] = bill(ledger, APRIL_1)
    body = get(catalog, tenant, f"/{invoice_id}").json()["invoice"]
    assert (body["taxes_amount_cents"], body["total_amount_cents"]) == (0, 2129)
    pdf = catalog.get(f"/api/v1/invoices/{invoice_id}/pdf", headers=tenant.headers).content
    text = pdf_text(pdf)
    assert "Reverse charge: VAT to be accounted for by the customer" in text
    assert "21.29 EUR" in text and "RC" in text


def test_an_unknown_or_foreign_invoice_is_not_found(
    catalog: Client, march: str, tenant: Tenant, ledger: Ledger
) -> None:
    for path in ("/00000000-0000-4000-8000-000000000000", "/not-a-uuid", "/not-a-uuid/audit"):
        response = get(catalog, tenant, path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "invoice_not_found"
    _, other_key = ledger.billing.create_organization("other")
    foreign = catalog.get(
        f"/api/v1/invoices/{march}", headers={"Authorization": f"Bearer {other_key}"}
    )
    assert foreign.json() == {
        "type": PROBLEM_TYPE_BASE + "invoice_not_found",
        "title": "Not Found",
        "status": 404,
        "detail": f"No invoice '{march}'.",
        "error": "Not Found",
        "code": "invoice_not_found",
    }


def pdf_text(data: bytes) -> str:
    """The text of a PDF, after checking it opens: header, trailer, and every cross-reference
    offset at its object. pdftotext reads it when installed; else the content streams'
    strings (Tally writes them uncompressed) are decoded."""
    assert data.startswith(b"%PDF-1.4\n"), data[:16]
    trailer = re.search(rb"startxref\n(\d+)\n%%EOF\n$", data)
    assert trailer is not None, data[-64:]
    xref = data[int(trailer.group(1)) :]
    assert xref.startswith(b"xref\n0 "), xref[:16]
    offsets = [int(offset) for offset in re.findall(rb"(\d{10}) 00000 n \n", xref)]
    assert offsets, xref[:64]
    for number, offset in enumerate(offsets, start=1):
        assert data[offset:].startswith(f"{number} 0 obj\n".encode()), number
    if shutil.which("pdftotext"):
        return subprocess.run(
            ["pdftotext", "-layout", "-", "-"], input=data, capture_output=True, check=True
        ).stdout.decode()
    strings = re.findall(rb"\(((?:\\.|[^\\)])*)\) Tj", data)
    return "\n".join(_unescape(s).decode("cp1252") for s in strings)


def _unescape(value: bytes) -> bytes:
    return re.sub(
        rb"\\([0-7]{3}|.)",
        lambda m: bytes([int(m.group(1), 8)]) if len(m.group(1)) == 3 else m.group(1),
        value,
    )


def test_a_long_invoice_runs_over_pages_that_repeat_the_table_header(
    catalog: Client, march: str, tenant: Tenant, ledger: Ledger
) -> None:
    billed = ledger.invoicing.invoice(tenant.organization_id, UUID(march))
    line = billed.fees[0]
    invoice = Invoice.draft(
        uuid4(),
        organization_id=tenant.organization_id,
        customer_id=billed.customer_id,
        external_customer_id="acme",
        invoice_type="subscription",
        currency="EUR",
        issuing_date=date(2026, 4, 1),
        net_payment_term=0,
        billing_periods=billed.billing_periods,
        fees=[replace(line, key=f"line {n}", amount_cents=n) for n in range(1, 121)],
        watermark=0,
        tax_rates=billed.tax_rates,
    )
    invoice.finalize("ACM-202604-099", 99, date(2026, 4, 1))
    pdf = invoice_pdf(
        invoice,
        seller=ledger.billing.organization(tenant.organization_id),
        buyer=ledger.billing.customer(tenant.organization_id, "acme"),
        descriptions=[f"Line {n}" for n in range(1, 121)],
        tax_names={"vat": "VAT"},
        content_hash="0" * 64,
    )
    text = pdf_text(pdf)
    pages = int(re.findall(r"Page 1/(\d+)", text)[0])
    assert pages > 1 and f"Page {pages}/{pages}" in text
    assert text.count("Unit price") == pages  # The table's header again on every page.
    assert "Line 120" in text and "72.60 EUR" in text  # Σ 1..120 = 72.60, no line lost.
    assert "ACM-202604-099 - content SHA-256 " + "0" * 64 in text
