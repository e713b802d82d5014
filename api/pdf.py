"""Invoices as PDF, with what an EU invoice must show, written by a small PDF 1.4 writer.

Content (billing-semantics §9.7, Directive 2006/112/EC Art. 226): issue date and sequential
number; seller and buyer with names, addresses and VAT numbers; the nature and quantity of the
services, their unit prices excluding VAT and the supply period; the taxable amount, rate and VAT
per rate; the totals; the reverse-charge mention when it applies. The writer uses the standard
Helvetica and Courier fonts (WinAnsi encoding: Western European text; other characters print as
"?") and leaves the page streams uncompressed, so the same invoice always gives the same bytes.
"""

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from domain.customer import Customer
from domain.invoice import Invoice
from domain.invoicing import FeeLine
from domain.money import CURRENCY_EXPONENTS
from domain.organization import Organization
from domain.periods import local_date

REVERSE_CHARGE_TAX_CODE: Final = "lago_eu_reverse_charge"  # Lago's code for it (lib/lago_eu_vat).
REVERSE_CHARGE_MENTION: Final = (
    "Reverse charge: VAT to be accounted for by the customer "
    "(Article 196 of Council Directive 2006/112/EC)."
)
PAGE_WIDTH: Final = 595  # A4 in points (595.28 x 841.89, rounded for whole-number operators).
PAGE_HEIGHT: Final = 842
MARGIN: Final = 50
RIGHT: Final = PAGE_WIDTH - MARGIN
BOTTOM: Final = 60  # The footer sits below.
COURIER_EM: Final = Decimal("0.6")  # Courier is monospaced: every glyph is 600/1000 em wide.
# Right edges of the line table's numeric columns, and the description's wrap width.
UNITS_RIGHT: Final = 330
UNIT_PRICE_RIGHT: Final = 440
VAT_RIGHT: Final = 485
DESCRIPTION_CHARS: Final = 44
# Fonts: /F1 Helvetica, /F2 Helvetica-Bold (text), /F3 Courier, /F4 Courier-Bold (numbers and
# their headings: monospaced, so they align right without font metrics).
FONTS: Final = ("Helvetica", "Helvetica-Bold", "Courier", "Courier-Bold")


def invoice_pdf(
    invoice: Invoice,
    *,
    seller: Organization,
    buyer: Customer,
    descriptions: Sequence[str],
    tax_names: Mapping[str, str],
    content_hash: str,
) -> bytes:
    """The PDF of a finalized (or voided) invoice; `descriptions` name its lines, in order."""
    assert invoice.number is not None, invoice.id  # Drafts have no number to print.
    assert len(descriptions) == len(invoice.fees), (len(descriptions), len(invoice.fees))
    timezone = buyer.timezone or "UTC"
    currency = invoice.currency
    totals = invoice.totals
    canvas = _Canvas()

    title = "INVOICE" if invoice.status != "voided" else "INVOICE (VOIDED)"
    canvas.text(MARGIN, canvas.y, title, font=2, size=18)
    canvas.y -= 28
    facts = [
        ("Invoice number", invoice.number),
        ("Issue date", invoice.issuing_date.isoformat()),
        ("Payment due", invoice.payment_due_date.isoformat() if invoice.payment_due_date else ""),
        ("Supply period", _supply_period(invoice.fees, timezone)),
        ("Currency", currency),
    ]
    for label, value in facts:
        canvas.text(MARGIN, canvas.y, label, font=2, size=9)
        canvas.text(MARGIN + 90, canvas.y, value, size=9)
        canvas.y -= 13
    canvas.y -= 12

    top = canvas.y
    left = _party("Seller", _seller_lines(seller))
    right = _party("Customer", _buyer_lines(buyer))
    for index, (label, font) in enumerate(left):
        canvas.text(MARGIN, top - 12 * index, label, font=font, size=9)
    for index, (label, font) in enumerate(right):
        canvas.text(PAGE_WIDTH / 2, top - 12 * index, label, font=font, size=9)
    canvas.y = top - 12 * max(len(left), len(right)) - 16

    _line_table(canvas, invoice.fees, descriptions, invoice.tax_rates, currency, timezone)
    _totals(canvas, invoice, tax_names)

    reverse_charge = any(REVERSE_CHARGE_TAX_CODE in fee.tax_codes for fee in invoice.fees)
    notes = [REVERSE_CHARGE_MENTION] if reverse_charge else []
    if reverse_charge and not buyer.fields.get("tax_identification_number"):
        notes.append("The customer's VAT number is missing: reverse charge needs it.")
    if totals.total_amount_cents > 0 and invoice.status == "finalized":
        notes.append(f"Amount due: {money(totals.total_amount_cents, currency)}.")
    canvas.y -= 8
    for note in notes:
        for part in textwrap.wrap(note, 100):
            canvas.ensure(12)
            canvas.text(MARGIN, canvas.y, part, size=9)
            canvas.y -= 12
    footer = f"{invoice.number} - content SHA-256 {content_hash}"
    return canvas.render(footer, title=invoice.number)


def money(cents: int, currency: str) -> str:
    """Cents in major units with the currency's exponent and thousands separators."""
    amount = Decimal(cents).scaleb(-CURRENCY_EXPONENTS[currency])
    return f"{amount:,f} {currency}"


def _supply_period(fees: Sequence[FeeLine], timezone: str) -> str:
    if not fees:
        return ""
    return _dates(min(f.from_at for f in fees), max(f.to_at for f in fees), timezone)


def _dates(from_at: datetime, to_at: datetime, timezone: str) -> str:
    """A half-open instant range as the local days it covers, both included."""
    first = local_date(from_at, timezone)
    last = local_date(max(from_at, to_at - timedelta(microseconds=1)), timezone)
    return f"{first.isoformat()} to {last.isoformat()}"


def _party(title: str, lines: list[str]) -> list[tuple[str, int]]:
    return [(title, 2), *((line, 1) for line in lines if line)]


def _address(values: Mapping[str, Any]) -> list[str]:
    city = " ".join(str(values[k]) for k in ("zipcode", "city") if values.get(k))
    return [
        str(values.get("address_line1") or ""),
        str(values.get("address_line2") or ""),
        city,
        str(values.get("state") or ""),
        str(values.get("country") or ""),
    ]


def _seller_lines(seller: Organization) -> list[str]:
    settings = seller.settings
    lines = [seller.name, str(settings.get("legal_name") or "")]
    lines.extend(_address(settings))
    if settings.get("tax_identification_number"):
        lines.append(f"VAT number: {settings['tax_identification_number']}")
    if settings.get("legal_number"):
        lines.append(f"Registration number: {settings['legal_number']}")
    if settings.get("email"):
        lines.append(str(settings["email"]))
    return lines


def _buyer_lines(buyer: Customer) -> list[str]:
    fields = buyer.fields
    name = fields.get("legal_name") or fields.get("name") or buyer.external_id
    lines = [str(name)]
    if fields.get("legal_name") and fields.get("name") and fields["name"] != name:
        lines.append(str(fields["name"]))
    lines.extend(_address(fields))
    if fields.get("tax_identification_number"):
        lines.append(f"VAT number: {fields['tax_identification_number']}")
    if fields.get("legal_number"):
        lines.append(f"Registration number: {fields['legal_number']}")
    lines.append(f"Customer id: {buyer.external_id}")
    return lines


def _line_table(
    canvas: "_Canvas",
    fees: Sequence[FeeLine],
    descriptions: Sequence[str],
    rates: Mapping[str, Decimal],
    currency: str,
    timezone: str,
) -> None:
    def header() -> None:
        canvas.text(MARGIN, canvas.y, "Description", font=2, size=9)
        canvas.text_right(UNITS_RIGHT, canvas.y, "Units", font=4, size=8)
        canvas.text_right(UNIT_PRICE_RIGHT, canvas.y, "Unit price", font=4, size=8)
        canvas.text_right(VAT_RIGHT, canvas.y, "VAT", font=4, size=8)
        canvas.text_right(RIGHT, canvas.y, "Net amount", font=4, size=8)
        canvas.y -= 5
        canvas.rule(canvas.y)
        canvas.y -= 12

    canvas.on_new_page = header
    header()
    for fee, description in zip(fees, descriptions, strict=True):
        wrapped = textwrap.wrap(description, DESCRIPTION_CHARS) or [""]
        period = _dates(fee.from_at, fee.to_at, timezone)
        canvas.ensure(11 * (len(wrapped) + 1) + 4)
        canvas.text(MARGIN, canvas.y, wrapped[0], size=9)
        canvas.text_right(UNITS_RIGHT, canvas.y, f"{fee.units:f}", font=3, size=8)
        canvas.text_right(UNIT_PRICE_RIGHT, canvas.y, f"{fee.unit_amount:f}", font=3, size=8)
        canvas.text_right(VAT_RIGHT, canvas.y, _vat_label(fee, rates), font=3, size=8)
        canvas.text_right(RIGHT, canvas.y, money(fee.amount_cents, currency), font=3, size=8)
        canvas.y -= 11
        for part in wrapped[1:]:
            canvas.text(MARGIN, canvas.y, part, size=9)
            canvas.y -= 11
        canvas.text(MARGIN + 8, canvas.y, period, size=7)
        canvas.y -= 15
    canvas.on_new_page = None
    canvas.rule(canvas.y + 8)


def _vat_label(fee: FeeLine, rates: Mapping[str, Decimal]) -> str:
    """The line's VAT rates ("RC": reverse charge, "-": none)."""
    if REVERSE_CHARGE_TAX_CODE in fee.tax_codes:
        return "RC"
    return "+".join(f"{rates[code]:f}%" for code in fee.tax_codes) if fee.tax_codes else "-"


def _totals(canvas: "_Canvas", invoice: Invoice, tax_names: Mapping[str, str]) -> None:
    currency = invoice.currency
    totals = invoice.totals
    rows: list[tuple[str, str, int]] = [
        ("Total excl. VAT", money(totals.sub_total_excluding_taxes_amount_cents, currency), 1)
    ]
    for tax in totals.taxes.applied_taxes:
        name = tax_names.get(tax.tax_code, tax.tax_code)
        label = f"{name} {tax.rate:f}% on {money(tax.taxable_base_cents, currency)}"
        rows.append((label, money(tax.tax_cents, currency), 1))
    rows.append(("Total VAT", money(totals.taxes_amount_cents, currency), 1))
    rows.append(
        ("Total incl. VAT", money(totals.sub_total_including_taxes_amount_cents, currency), 2)
    )
    if totals.credit_notes_amount_cents:
        rows.append(("Credit notes", money(-totals.credit_notes_amount_cents, currency), 1))
    if totals.prepaid_credit_amount_cents:
        rows.append(("Prepaid credits", money(-totals.prepaid_credit_amount_cents, currency), 1))
    rows.append(("Total", money(totals.total_amount_cents, currency), 2))
    canvas.ensure(13 * len(rows) + 10)
    canvas.y -= 6
    for label, amount, font in rows:
        canvas.text(PAGE_WIDTH / 2 - 40, canvas.y, label, font=font, size=9)
        canvas.text_right(RIGHT, canvas.y, amount, font=font + 2, size=9)
        canvas.y -= 13


@dataclass
class _Canvas:
    """Pages of PDF drawing operators, filled top to bottom."""

    pages: list[list[str]] = field(default_factory=lambda: [[]])
    y: float = PAGE_HEIGHT - MARGIN
    on_new_page: Any = None  # Called after a page break (a table repeats its header).

    def text(self, x: float, y: float, value: str, *, font: int = 1, size: float = 10) -> None:
        self.pages[-1].append(f"BT /F{font} {size} Tf {_n(x)} {_n(y)} Td ({_escape(value)}) Tj ET")

    def text_right(
        self, right: float, y: float, value: str, *, font: int = 3, size: float = 10
    ) -> None:
        assert font in (3, 4), font  # Only Courier's widths are known without font metrics.
        width = len(value) * COURIER_EM * Decimal(str(size))
        self.text(right - float(width), y, value, font=font, size=size)

    def rule(self, y: float) -> None:
        self.pages[-1].append(f"0.5 w {MARGIN} {_n(y)} m {RIGHT} {_n(y)} l S")

    def ensure(self, height: float) -> None:
        """Start a new page unless `height` points still fit above the footer."""
        if self.y - height >= BOTTOM:
            return
        self.pages.append([])
        self.y = PAGE_HEIGHT - MARGIN
        if self.on_new_page is not None:
            self.on_new_page()

    def render(self, footer: str, *, title: str) -> bytes:
        count = len(self.pages)
        for number, page in enumerate(self.pages, start=1):
            page.append(f"BT /F1 7 Tf {MARGIN} 30 Td ({_escape(footer)}) Tj ET")
            page.append(f"BT /F1 7 Tf {RIGHT - 40} 30 Td (Page {number}/{count}) Tj ET")
        return _document(["\n".join(page).encode("ascii") for page in self.pages], title)


def _n(value: float) -> str:
    """A PDF number: at most two decimals, no exponent."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _escape(value: str) -> str:
    """A PDF literal string's content in WinAnsi (cp1252), as ASCII with octal escapes."""
    out = []
    for byte in value.encode("cp1252", errors="replace"):
        char = chr(byte)
        if char in "()\\":
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def _document(contents: list[bytes], title: str) -> bytes:
    """Catalog, page tree, fonts, one page and one content stream per page, xref, trailer."""
    font_ids = [3 + index for index in range(len(FONTS))]
    first_page = 3 + len(FONTS)
    page_ids = [first_page + 2 * index for index in range(len(contents))]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{pid} 0 R".encode() for pid in page_ids)
        + f"] /Count {len(page_ids)} >>".encode(),
    ]
    objects.extend(
        f"<< /Type /Font /Subtype /Type1 /BaseFont /{name} /Encoding /WinAnsiEncoding >>".encode()
        for name in FONTS
    )
    fonts = " ".join(f"/F{index + 1} {fid} 0 R" for index, fid in enumerate(font_ids))
    for page_id, content in zip(page_ids, contents, strict=True):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] "
            f"/Resources << /Font << {fonts} >> >> /Contents {page_id + 1} 0 R >>".encode()
        )
        objects.append(
            f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream"
        )
    info_id = len(objects) + 1
    objects.append(f"<< /Title ({_escape(title)}) /Producer (Tally) >>".encode())
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info_id} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)
