"""VatNumberCheck: the VIES verification of one VAT number for one organization, and its proof.

A check is requested, then attempted until VIES answers. Errors never mean "invalid" (§9.5):
an attempt that fails is retried later with a growing delay, and after CHECK_ATTEMPTS_MAX
failures the check is given up ("unverified"), for a policy to decide. The answer keeps VIES's
consultation number (requestIdentifier), the evidence a tax audit asks for. A check is
requested again to re-verify an old answer; its history keeps every earlier answer.
"""

import json
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID, uuid5

from eventsourcing.domain import AggregateCreated, AggregateEvent, BaseAggregate, event

from domain import ids
from domain.vat import CHECK_INVALID, CHECK_PENDING, CHECK_UNVERIFIED, CHECK_VALID
from domain.vat_numbers import check_vat_number

# VIES outages of a member state last minutes to hours; twelve attempts, one minute apart and
# then doubling up to six hours, keep trying for about 20 hours before a policy takes over.
CHECK_ATTEMPTS_MAX: Final = 12
RETRY_DELAY_FIRST: Final = timedelta(minutes=1)
RETRY_DELAY_MAX: Final = timedelta(hours=6)


def vat_number_check_id(organization_id: UUID, vat_number: str) -> UUID:
    key = json.dumps(["vat_number_check", str(organization_id), vat_number], separators=(",", ":"))
    return uuid5(ids.NAMESPACE, key)


def retry_delay(failed_attempts: int) -> timedelta:
    """The wait after the n-th failed attempt in a row (n ≥ 1)."""
    assert failed_attempts >= 1, failed_attempts
    delay: timedelta = RETRY_DELAY_FIRST * 2 ** (failed_attempts - 1)
    return min(delay, RETRY_DELAY_MAX)


class VatNumberCheck(BaseAggregate[UUID]):
    TOPIC = "tally.VatNumberCheck"

    class Event(AggregateEvent):
        pass

    class Created(AggregateCreated, Event):
        """The first request to verify this number."""

        TOPIC = "tally.VatNumberCheck.Created"
        organization_id: UUID
        vat_number: str
        requester_vat_number: str | None
        requested_at: datetime

    class Requested(Event):
        """A request to verify it again (a re-verification, or after giving up)."""

        TOPIC = "tally.VatNumberCheck.Requested"
        requester_vat_number: str | None
        requested_at: datetime

    class AttemptFailed(Event):
        TOPIC = "tally.VatNumberCheck.AttemptFailed"
        error: str
        failed_at: datetime
        retry_at: datetime

    class GaveUp(Event):
        TOPIC = "tally.VatNumberCheck.GaveUp"
        error: str
        failed_at: datetime

    class Answered(Event):
        """VIES's answer: valid or not, for which member state, and the consultation number."""

        TOPIC = "tally.VatNumberCheck.Answered"
        valid: bool
        vies_country: str
        consultation_number: str | None
        checked_at: datetime
        name: str | None
        address: str | None

    @staticmethod
    def create_id(organization_id: UUID, vat_number: str) -> UUID:
        return vat_number_check_id(organization_id, vat_number)

    # Commands decide; the application passes its clock as `now`.

    @classmethod
    def request(
        cls,
        organization_id: UUID,
        vat_number: str,
        requester_vat_number: str | None,
        now: datetime,
    ) -> "VatNumberCheck":
        assert check_vat_number(vat_number).well_formed, vat_number  # The caller checked it.
        return cls(
            organization_id=organization_id,
            vat_number=vat_number,
            requester_vat_number=requester_vat_number,
            requested_at=now,
        )

    def request_again(self, requester_vat_number: str | None, now: datetime) -> bool:
        """Verify again; a check still pending is left as it is. True if requested."""
        if self.status == CHECK_PENDING:
            return False
        self._requested(requester_vat_number=requester_vat_number, requested_at=now)
        return True

    def is_due(self, now: datetime) -> bool:
        return self.status == CHECK_PENDING and self.next_attempt_at <= now

    def record_answer(
        self,
        *,
        valid: bool,
        vies_country: str,
        consultation_number: str | None,
        checked_at: datetime,
        name: str | None,
        address: str | None,
    ) -> bool:
        """Keep VIES's answer; an answer to a check no longer pending is ignored (False)."""
        if self.status != CHECK_PENDING:
            return False
        self._answered(
            valid=valid,
            vies_country=vies_country,
            consultation_number=consultation_number or None,
            checked_at=checked_at,
            name=name or None,
            address=address or None,
        )
        return True

    def record_failure(self, error: str, now: datetime) -> bool:
        """An attempt VIES did not answer: retry later, or give up. False if not pending."""
        if self.status != CHECK_PENDING:
            return False
        if self.failed_attempts + 1 >= CHECK_ATTEMPTS_MAX:
            self._gave_up(error=error, failed_at=now)
        else:
            retry_at = now + retry_delay(self.failed_attempts + 1)
            self._attempt_failed(error=error, failed_at=now, retry_at=retry_at)
        return True

    # Evolvers apply.

    @event(Created)
    def __init__(
        self,
        organization_id: UUID,
        vat_number: str,
        requester_vat_number: str | None,
        requested_at: datetime,
    ) -> None:
        self.organization_id = organization_id
        self.vat_number = vat_number
        self._start(requester_vat_number, requested_at)
        self.valid: bool | None = None
        self.vies_country: str | None = None
        self.consultation_number: str | None = None
        self.checked_at: datetime | None = None
        self.name: str | None = None
        self.address: str | None = None

    def _start(self, requester_vat_number: str | None, requested_at: datetime) -> None:
        self.status = CHECK_PENDING
        self.requester_vat_number = requester_vat_number
        self.requested_at = requested_at
        self.next_attempt_at = requested_at
        self.failed_attempts = 0
        self.last_error: str | None = None

    @event(Requested)
    def _requested(self, requester_vat_number: str | None, requested_at: datetime) -> None:
        self._start(requester_vat_number, requested_at)

    @event(AttemptFailed)
    def _attempt_failed(self, error: str, failed_at: datetime, retry_at: datetime) -> None:
        self.failed_attempts += 1
        self.last_error = error
        self.next_attempt_at = retry_at

    @event(GaveUp)
    def _gave_up(self, error: str, failed_at: datetime) -> None:
        self.failed_attempts += 1
        self.last_error = error
        self.status = CHECK_UNVERIFIED

    @event(Answered)
    def _answered(
        self,
        valid: bool,
        vies_country: str,
        consultation_number: str | None,
        checked_at: datetime,
        name: str | None,
        address: str | None,
    ) -> None:
        self.status = CHECK_VALID if valid else CHECK_INVALID
        self.valid = valid
        self.vies_country = vies_country
        self.consultation_number = consultation_number
        self.checked_at = checked_at
        self.name = name
        self.address = address
