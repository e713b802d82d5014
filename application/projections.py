"""The resource index: an organization-scoped list of resources, projected from their events.

List queries read it; commands never do. Each view stores its rows and the tracking position in
one transaction, so every event applies exactly once even when several processes catch up.
"""

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Recording, Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from application.ports import IndexEntry, IndexStatus
from domain.add_on import AddOn
from domain.billable_metric import BillableMetric
from domain.credit_note import CreditNote
from domain.customer import Customer
from domain.invoice import Invoice
from domain.organization import Organization
from domain.plan import Plan
from domain.subscription import Subscription
from domain.tax import Tax
from domain.wallet import Wallet

CATCH_UP_BATCH = 500
IndexChange = IndexEntry | IndexStatus


class IndexView(TrackingRecorder, ABC):
    @abstractmethod
    def apply(self, changes: Sequence[IndexChange], tracking: Tracking) -> None:
        """Apply the changes in order (an entry adds a resource or replaces the one with its
        aggregate id; a status changes one), and record the position, in one transaction."""

    @abstractmethod
    def aggregate_ids_of_kind(self, kind: str) -> list[UUID]:
        """Every resource of a kind, in all organizations, oldest first."""

    @abstractmethod
    def page(
        self,
        organization_id: UUID,
        kind: str,
        page: int,
        per_page: int,
        *,
        parent_key: str | None = None,
        statuses: Sequence[str] = (),
    ) -> tuple[list[UUID], int]:
        """Aggregate ids of one page (1-based), newest first, and the total count."""

    @abstractmethod
    def parent_keys(self, organization_id: UUID, kinds: Sequence[str]) -> set[str]:
        """The parent keys of the resources of these kinds (e.g. the customers that hold a
        credit note or a wallet), in one read."""


class MemoryIndexView(POPOTrackingRecorder, IndexView):
    """The index for the in-memory store (unit and API tests)."""

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[UUID, IndexEntry] = {}

    def apply(self, changes: Sequence[IndexChange], tracking: Tracking) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            for change in changes:
                if isinstance(change, IndexEntry):
                    self._entries[change.aggregate_id] = change
                elif change.aggregate_id in self._entries:
                    self._entries[change.aggregate_id] = replace(
                        self._entries[change.aggregate_id], status=change.status
                    )
            self._insert_tracking(tracking)

    def aggregate_ids_of_kind(self, kind: str) -> list[UUID]:
        with self._database_lock:
            rows = [e for e in self._entries.values() if e.kind == kind]
        rows.sort(key=lambda e: (e.created_at, e.aggregate_id.int))
        return [e.aggregate_id for e in rows]

    def page(
        self,
        organization_id: UUID,
        kind: str,
        page: int,
        per_page: int,
        *,
        parent_key: str | None = None,
        statuses: Sequence[str] = (),
    ) -> tuple[list[UUID], int]:
        with self._database_lock:
            rows = [
                e
                for e in self._entries.values()
                if e.organization_id == organization_id
                and e.kind == kind
                and (parent_key is None or e.parent_key == parent_key)
                and (not statuses or e.status in statuses)
            ]
        rows.sort(key=lambda e: (e.created_at, e.aggregate_id.int), reverse=True)
        start = (page - 1) * per_page
        return [e.aggregate_id for e in rows[start : start + per_page]], len(rows)

    def parent_keys(self, organization_id: UUID, kinds: Sequence[str]) -> set[str]:
        with self._database_lock:
            return {
                e.parent_key
                for e in self._entries.values()
                if e.organization_id == organization_id
                and e.kind in kinds
                and e.parent_key is not None
            }


# Events that add a resource to the index: its kind and the attributes naming its key and parent.
INDEXED: dict[type[Any], tuple[str, str, str | None, str]] = {
    Customer.Created: ("customer", "external_id", None, "active"),
    Tax.Created: ("tax", "code", None, "active"),
    AddOn.Created: ("add_on", "code", None, "active"),
    BillableMetric.Created: ("billable_metric", "code", None, "active"),
    # Plan.OverrideCreated is left out: a subscription's copy is not in the catalog.
    Plan.Created: ("plan", "code", None, "active"),
    Subscription.Created: ("subscription", "external_id", "external_customer_id", "active"),
    Organization.Created: ("organization", "name", None, "active"),
    Invoice.Created: ("invoice", "originator_id", "external_customer_id", "draft"),
    CreditNote.Created: ("credit_note", "number", "external_customer_id", "available"),
    Wallet.Created: ("wallet", "originator_id", "external_customer_id", "active"),  # Code optional.
}
# Events that change a resource's status in the index.
STATUSES: dict[type[Any], str] = {
    Customer.Deleted: "deleted",
    Customer.Recreated: "active",
    Tax.Deleted: "deleted",
    AddOn.Deleted: "deleted",
    BillableMetric.Deleted: "deleted",
    Invoice.Finalized: "finalized",
    Invoice.Voided: "voided",
    Plan.Deleted: "deleted",  # Only catalog plans are deleted (Plan.delete).
    CreditNote.Consumed: "consumed",
    CreditNote.Voided: "voided",
    Wallet.Terminated: "terminated",
}
# Events whose status is one of their fields (the table's status is then only a default).
STATUS_FIELDS: dict[type[Any], str] = {
    CreditNote.Created: "credit_status",
    CreditNote.Consumed: "credit_status",
}


class ResourceIndexProjection(Projection[IndexView]):
    name = "resource_index"
    topics = tuple(get_topic(cls) for cls in (*INDEXED, *STATUSES))

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.process_batch([domain_event], tracking)

    def process_batch(self, domain_events: Sequence[Any], tracking: Tracking) -> None:
        """The events' changes, applied with the last one's position in one transaction. Each
        resource's changes are folded into its last state (an invoice created and finalized in
        the batch is one row written): every change sets fields, so the result is the same."""
        folded: dict[UUID, IndexChange] = {}
        for event in domain_events:
            change = _change(event)
            if change is None:
                continue
            earlier = folded.get(change.aggregate_id)
            if isinstance(change, IndexStatus) and isinstance(earlier, IndexEntry):
                change = replace(earlier, status=change.status)
            folded[change.aggregate_id] = change
        self.view.apply(list(folded.values()), tracking)


def _change(domain_event: Any) -> IndexChange | None:
    """What an event changes in the index (None: an event we ignore; it still advances the
    position)."""
    if type(domain_event) in INDEXED:
        kind, key, parent, status = INDEXED[type(domain_event)]
        return IndexEntry(
            kind=kind,
            # An organization indexes itself.
            organization_id=getattr(domain_event, "organization_id", domain_event.originator_id),
            aggregate_id=domain_event.originator_id,
            key=str(getattr(domain_event, key)),
            parent_key=getattr(domain_event, parent) if parent else None,
            status=_status(domain_event, status),
            created_at=domain_event.timestamp,
        )
    if type(domain_event) in STATUSES:
        status = _status(domain_event, STATUSES[type(domain_event)])
        return IndexStatus(domain_event.originator_id, status)
    return None


def _status(domain_event: Any, default: str) -> str:
    field = STATUS_FIELDS.get(type(domain_event))
    return default if field is None else str(getattr(domain_event, field))


class CatchUp:
    """Pulls new notifications into a projection; safe to run from many threads and processes."""

    def __init__(self, app: Application[UUID], projection: Projection[Any]) -> None:
        self.app = app
        self.projection = projection
        # Views of one database share a tracking table: each projection has its own row.
        self.tracking_name = f"{app.name}.{projection.name}"
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            while self._step():
                pass

    def recorded(self, recordings: Sequence[Recording[UUID]]) -> None:
        """Apply what this process has just saved without reading it back, if nothing the
        projection follows was recorded between its position and these recordings (else the
        next catch-up reads them as usual). Stores serialise their inserts (the library locks
        the events table on PostgreSQL), so every notification before these is committed."""
        if not recordings or not isinstance(self.projection, ResourceIndexProjection):
            return
        first, last = recordings[0].notification.id, recordings[-1].notification.id
        with self._lock:
            view = self.projection.view
            position = view.max_tracking_id(self.tracking_name) or 0
            if first <= position:
                return  # Applied already.
            between = self.app.recorder.select_notifications(
                position,
                1,
                stop=first - 1,
                topics=self.projection.topics,
                inclusive_of_start=False,
            )
            if between:
                return
            followed = set(self.projection.topics)
            events = [r.domain_event for r in recordings if r.notification.topic in followed]
            try:
                self.projection.process_batch(events, Tracking(self.tracking_name, last))
            except IntegrityError:
                return  # Another process applied them first.

    def _step(self) -> bool:
        view = self.projection.view
        position = view.max_tracking_id(self.tracking_name) or 0
        notifications = self.app.recorder.select_notifications(
            position,
            CATCH_UP_BATCH,
            topics=self.projection.topics,
            inclusive_of_start=False,
        )
        if not notifications:
            return False
        try:
            if isinstance(self.projection, ResourceIndexProjection):
                # One transaction for the batch: a billing run's catch-up was one per event.
                self.projection.process_batch(
                    [self.app.mapper.to_domain_event(n) for n in notifications],
                    Tracking(self.tracking_name, notifications[-1].id),
                )
            else:
                for notification in notifications:
                    self.projection.process_event(
                        self.app.mapper.to_domain_event(notification),
                        Tracking(self.tracking_name, notification.id),
                    )
        except IntegrityError:
            return True  # Another process applied it first: read the position again.
        return len(notifications) == CATCH_UP_BATCH
