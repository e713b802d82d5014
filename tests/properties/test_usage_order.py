"""Totals do not depend on the order events arrive in (§5 R5): permutations, re-sends and
batchings into the memory usage log, and through the metering service to current usage."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.settings import memory_settings
from adapters.stores import Ledger, open_ledger
from application.metering import EventInput
from application.usage_log import MemoryUsageLog, StoredUsage
from tests import usage_contract as contract

NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
MARCH_1 = datetime(2026, 3, 1, tzinfo=UTC)


def batched(items: list[StoredUsage] | list[EventInput], sizes: list[int]) -> list[list]:  # type: ignore[type-arg]
    batches, position = [], 0
    for size in sizes:
        if position >= len(items):
            break
        batches.append(items[position : position + size])
        position += size
    if position < len(items):
        batches.append(items[position:])
    return batches


@settings(max_examples=60, deadline=None)
@given(
    history=contract.usage_histories(),
    order=st.randoms(use_true_random=False),
    sizes=st.lists(st.integers(1, 10), min_size=1, max_size=30),
)
def test_log_totals_do_not_depend_on_order_resends_or_batching(
    history: contract.History, order: object, sizes: list[int]
) -> None:
    org = contract.uuid4()
    sent = [
        contract.usage(
            org,
            f"tx_{index}",
            code=spec.code,
            at=contract.START + spec.slot * contract.BUCKET + spec.offset,
            value=None if spec.code == "calls" else str(spec.value),
            model=spec.model,
            precise=None if spec.precise is None else str(spec.precise),
        )
        for index, spec in enumerate(history.events)
    ]
    resent = [
        replace(sent[i], received_at=contract.RECEIVED_AT + timedelta(1)) for i in history.resent
    ]
    arrivals = [*sent, *resent]
    order.shuffle(arrivals)  # type: ignore[attr-defined]
    in_order, shuffled = MemoryUsageLog(), MemoryUsageLog()
    in_order.append(sent)
    for batch in batched(arrivals, sizes):
        shuffled.append(batch)
    end_at = contract.START + contract.SLOTS * contract.BUCKET
    for code in ("tokens", "calls"):
        expected = contract.oracle_totals(sent, "sub_1", code, contract.START, end_at)
        for log in (in_order, shuffled):
            assert log.totals(org, "sub_1", code, contract.START, end_at) == expected
            events = log.events(org, "sub_1", code, contract.START, end_at)
            assert [e.event for e in events] == [
                e.event for e in in_order.events(org, "sub_1", code, contract.START, end_at)
            ]


def ledger_with_catalog() -> tuple[Ledger, object]:
    ledger = open_ledger(memory_settings())
    ledger.billing.now = lambda: NOW
    billing = ledger.billing
    organization, _ = billing.create_organization("acme")
    metric = billing.create_billable_metric(
        organization.id,
        "tokens",
        {
            "name": "Tokens",
            "aggregation_type": "sum_agg",
            "field_name": "tokens",
            "filters": [{"key": "model", "values": ["small", "large"]}],
        },
    )
    billing.create_plan(
        organization.id,
        "llm",
        {
            "name": "LLM",
            "interval": "monthly",
            "amount_cents": 0,
            "amount_currency": "EUR",
            "pay_in_advance": False,
            "charges": [
                {
                    "billable_metric_id": str(metric.id),
                    "charge_model": "graduated",  # Order-sensitive if anything were.
                    "properties": {
                        "graduated_ranges": [
                            {
                                "from_value": 0,
                                "to_value": 100,
                                "per_unit_amount": "0.5",
                                "flat_amount": "0",
                            },
                            {
                                "from_value": 101,
                                "to_value": None,
                                "per_unit_amount": "0.1",
                                "flat_amount": "1",
                            },
                        ]
                    },
                    "filters": [
                        {
                            "values": {"model": ["large"]},
                            "properties": {
                                "graduated_ranges": [
                                    {
                                        "from_value": 0,
                                        "to_value": 10,
                                        "per_unit_amount": "2",
                                        "flat_amount": "0",
                                    },
                                    {
                                        "from_value": 11,
                                        "to_value": None,
                                        "per_unit_amount": "0.7",
                                        "flat_amount": "0",
                                    },
                                ]
                            },
                        }
                    ],
                }
            ],
        },
    )
    billing.create_subscription(
        organization.id,
        "sub_1",
        external_customer_id="acme",
        plan_code="llm",
        subscription_at=MARCH_1,
    )
    return ledger, organization.id


event_inputs = st.lists(
    st.tuples(
        st.integers(0, 18 * 24 * 3600),  # Seconds after March 1, before NOW.
        st.decimals(min_value=0, max_value=1000, places=3),
        st.sampled_from(["small", "large"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=15, deadline=None)
@given(
    specs=event_inputs,
    resent=st.lists(st.integers(0, 24), max_size=5),
    order=st.randoms(use_true_random=False),
    sizes=st.lists(st.integers(1, 10), min_size=1, max_size=30),
)
def test_current_usage_does_not_depend_on_the_order_events_are_ingested(
    specs: list[tuple[int, Decimal, str]], resent: list[int], order: object, sizes: list[int]
) -> None:
    inputs = [
        EventInput(
            f"tx_{n}",
            "sub_1",
            "tokens",
            int(MARCH_1.timestamp()) + seconds,
            {"tokens": str(tokens), "model": model},
            None,
        )
        for n, (seconds, tokens, model) in enumerate(specs)
    ]
    arrivals = inputs + [inputs[i] for i in resent if i < len(inputs)]
    order.shuffle(arrivals)  # type: ignore[attr-defined]
    answers = []
    for sequence, batching in ((inputs, [len(inputs)]), (arrivals, sizes)):
        ledger, org = ledger_with_catalog()
        try:
            for batch in batched(sequence, batching):
                ledger.metering.ingest(org, batch, batch=True)  # type: ignore[arg-type]
            usage = ledger.usage_queries.current_usage(org, "acme", "sub_1")  # type: ignore[arg-type]
            answers.append(
                (
                    usage.amount_cents,
                    [
                        (fee.bucket, fee.units, fee.events_count, fee.amount_cents)
                        for c in usage.charges
                        for fee in c.fees
                    ],
                )
            )
        finally:
            ledger.close()
    assert answers[0] == answers[1]
    assert sum(count for _, _, count, _ in answers[0][1]) == len(inputs)
