"""The event store on PostgreSQL: many aggregates' stored events in one read (the billing run's
loads), and events inserted in binary."""

from collections.abc import Sequence
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder
from psycopg.sql import SQL, Identifier


class PostgresEventsReader:
    def __init__(self, recorder: PostgresAggregateRecorder) -> None:
        self.datastore = recorder.datastore
        self._select = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {0}.{1} "
            "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
        ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))

    def select_many(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select, (list(originator_ids),))
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]


def binary_event_inserts(recorder: PostgresAggregateRecorder) -> None:
    """Send the events of a save as a binary array of the library's composite type, not as
    text: the text form escapes every event's JSON with a regular expression, a tenth of a
    billing run's time (ADR 0027). The statement is the library's, its one parameter marked
    binary (%b); tests/integration/test_stores.py checks it still is."""
    text = recorder.insert_events_statement.as_string()
    assert text.count("%s") == 1 and "unnest(%s::" in text, text
    recorder.insert_events_statement = SQL(text.replace("unnest(%s::", "unnest(%b::"))  # type: ignore[assignment]
