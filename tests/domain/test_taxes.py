"""Taxes: the most specific level wins (§9.1); one rounding per rate on rounded nets (§9.2)."""

from decimal import Decimal

from domain.taxes import AppliedTax, applicable_tax_codes, invoice_taxes, most_specific_tax_codes

VAT_19 = ("vat_19", Decimal("19"))
VAT_20 = ("vat_20", Decimal("20"))


def test_the_most_specific_non_empty_level_wins_and_levels_never_add_up() -> None:
    # Given charge reduced_10, plan vat_20, customer vat_21 and an organization default (§9.1)
    charge, plan, customer, organization = ["reduced_10"], ["vat_20"], ["vat_21"], ["vat_org"]
    # When a charge fee is taxed, then only the charge's taxes apply
    assert applicable_tax_codes(charge, plan, customer, organization) == ("reduced_10",)
    # When the subscription fee is taxed (no charge level), then the plan's
    assert applicable_tax_codes([], plan, customer, organization) == ("vat_20",)
    # When a one-off add-on fee without add-on taxes is taxed (no plan level), then the customer's
    assert most_specific_tax_codes([], [], customer, organization) == ("vat_21",)
    assert applicable_tax_codes([], [], [], organization) == ("vat_org",)
    assert applicable_tax_codes([], [], [], []) == ()


def test_every_code_of_the_winning_level_applies_once() -> None:
    codes = applicable_tax_codes(["vat_20", "eco_1", "vat_20"], ["plan"], [], [])
    assert codes == ("vat_20", "eco_1")


def test_tax_is_rounded_once_per_rate_not_per_line() -> None:
    # Given three lines of 0.02 at 19 % (§1.4)
    lines = [(2, [VAT_19])] * 3
    # When the invoice is taxed
    taxes = invoice_taxes(lines)
    # Then 0.06 × 19 % = 0.0114 → 0.01, where per-line rounding would give 0.00
    assert taxes.applied_taxes == (AppliedTax("vat_19", Decimal(19), 6, 1),)
    assert taxes.taxes_amount_cents == 1
    # And the cent is shared by largest remainder, ties to the first line
    assert [line.taxes_amount_cents for line in taxes.lines] == [1, 0, 0]


def test_the_worked_invoice_taxes_its_nets_after_coupon() -> None:
    # Given nets 45.00 and 22.22 after the coupon, both at 20 % (§8.2)
    taxes = invoice_taxes([(4500, [VAT_20]), (2222, [VAT_20])])
    # Then 67.22 × 20 % = 13.444 → 13.44
    assert taxes.taxes_amount_cents == 1344
    assert [line.taxes_amount_cents for line in taxes.lines] == [900, 444]
    assert taxes.taxes_rate == Decimal(20)


def test_each_rate_is_its_own_base_and_the_total_is_their_sum() -> None:
    # Given a charge at 10 %, a subscription fee at 20 %, and a line with two taxes (§9.1, §9.2)
    reduced = ("reduced_10", Decimal("10"))
    eco = ("eco_2.5", Decimal("2.5"))
    lines = [(1005, [reduced]), (2999, [VAT_20]), (333, [VAT_20, eco])]
    # When the invoice is taxed
    taxes = invoice_taxes(lines)
    # Then each (code, rate) is rounded once on its own base
    assert [(t.tax_code, t.taxable_base_cents, t.tax_cents) for t in taxes.applied_taxes] == [
        ("reduced_10", 1005, 101),  # 100.5 → 101
        ("vat_20", 3332, 666),  # 666.4 → 666
        ("eco_2.5", 333, 8),  # 8.325 → 8
    ]
    assert taxes.taxes_amount_cents == 101 + 666 + 8
    # And vat_20's 6.66 splits 599.44 / 66.56: the leftover cent goes to the larger remainder
    assert [line.taxes_amount_cents for line in taxes.lines] == [101, 599, 67 + 8]
    # The average rate weights each line by its net: (1005×10 + 2999×20 + 333×22.5) / 4337
    assert taxes.taxes_rate == Decimal("17.874682960571824")


def test_a_code_at_an_older_rate_is_a_separate_base() -> None:
    # Given an adjustment line taxed at the rate of its original tax point (§8.5, D10)
    taxes = invoice_taxes([(1000, [("vat_ee", Decimal(22))]), (1000, [("vat_ee", Decimal(24))])])
    # Then each rate is its own base
    assert [(t.rate, t.tax_cents) for t in taxes.applied_taxes] == [(22, 220), (24, 240)]


def test_zero_and_untaxed_lines() -> None:
    # Given a free line at 20 % and a line without taxes
    taxes = invoice_taxes([(0, [VAT_20]), (500, [])])
    # Then there is no tax, no division by a zero base, and the average rate is 0
    assert taxes.applied_taxes == (AppliedTax("vat_20", Decimal(20), 0, 0),)
    assert [line.taxes_amount_cents for line in taxes.lines] == [0, 0]
    assert taxes.lines[1].applied_taxes == ()
    assert (taxes.taxes_amount_cents, taxes.taxes_rate) == (0, 0)


def test_an_invoice_without_lines_has_no_taxes() -> None:
    taxes = invoice_taxes([])
    assert (taxes.applied_taxes, taxes.lines, taxes.taxes_amount_cents) == ((), (), 0)


def test_a_decimal_rate_is_exact() -> None:
    # Given 25.5 % (a rate floats misstate, D14) on 10.00, then 2.55 exactly
    assert invoice_taxes([(1000, [("vat_fi", Decimal("25.5"))])]).taxes_amount_cents == 255
