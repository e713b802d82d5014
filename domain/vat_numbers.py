"""EU VAT numbers, offline: normalise, check the format (python-stdnum), say if VIES can verify it.

Pure: no I/O. Only a well-formed number of an EU member state is worth a VIES call, and only a
number VIES then confirms can ground a reverse charge (billing-semantics §9.3, §9.5).
"""

from dataclasses import dataclass
from typing import Final

from stdnum.eu import vat as stdnum_vat
from stdnum.exceptions import ValidationError

from domain.vat_rates import EU_MEMBER_STATES, VIES_PREFIXES

# A VIES prefix → the member state's ISO 3166 code; only Greece differs (EL, not GR).
MEMBER_STATE_OF_PREFIX: Final = {prefix: iso for iso, prefix in VIES_PREFIXES.items()}
# Prefixes that look like EU VAT numbers yet never ground a reverse charge on services: XI is
# Northern Ireland (goods only), EU a non-Union OSS registration, IM the Isle of Man (UK VAT).
NOT_ELIGIBLE_PREFIXES: Final = frozenset({"XI", "EU", "IM"})

ABSENT: Final = "absent"
WELL_FORMED: Final = "well_formed"
MALFORMED: Final = "malformed"
NOT_ELIGIBLE: Final = "not_eligible"


@dataclass(frozen=True)
class VatNumberFormat:
    """What the offline check says about a customer's tax_identification_number."""

    status: str  # ABSENT, WELL_FORMED, MALFORMED or NOT_ELIGIBLE.
    number: str | None = None  # Compact, upper case, with its VIES prefix: "EL094259216".
    prefix: str | None = None  # "EL"
    member_state: str | None = None  # ISO code of the prefix's member state: "GR".

    @property
    def well_formed(self) -> bool:
        return self.status == WELL_FORMED

    @property
    def vies_parts(self) -> tuple[str, str] | None:
        """(prefix, national number), as VIES takes them, for a well-formed number."""
        if self.status != WELL_FORMED:
            return None
        assert self.number is not None and self.prefix is not None, self
        return self.prefix, self.number[len(self.prefix) :]


def check_vat_number(raw: str | None, customer_country: str | None = None) -> VatNumberFormat:
    """Normalise and check a VAT number offline.

    A number typed without its prefix ("40303265045") gets the prefix of the customer's country
    when that country is a member state. A Greek number typed with GR is read as EL, the prefix
    VIES knows. The result never says "valid": only VIES can.
    """
    if raw is None or not raw.strip():
        return VatNumberFormat(ABSENT)
    number = "".join(c for c in raw.upper() if c.isalnum())
    if not number[:2].isalpha() and customer_country in EU_MEMBER_STATES:
        number = VIES_PREFIXES[customer_country] + number
    prefix = number[:2]
    if prefix == "GR":
        number, prefix = "EL" + number[2:], "EL"
    if prefix in NOT_ELIGIBLE_PREFIXES:
        return VatNumberFormat(NOT_ELIGIBLE, number, prefix)
    if prefix not in MEMBER_STATE_OF_PREFIX:
        return VatNumberFormat(MALFORMED, number)
    try:
        number = stdnum_vat.validate(number)
    except ValidationError:
        return VatNumberFormat(MALFORMED, number, prefix, MEMBER_STATE_OF_PREFIX[prefix])
    return VatNumberFormat(WELL_FORMED, number, prefix, MEMBER_STATE_OF_PREFIX[prefix])
