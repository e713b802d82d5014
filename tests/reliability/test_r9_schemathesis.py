"""R9, API fuzzing: schemathesis against the OpenAPI document the app serves
(`/openapi/openapi.json`, completed by api/openapi.py with request bodies and error bodies),
every operation, with valid and with negative data, in process (ASGI) on a real SQLite ledger
with a real API key and a small catalog (a customer, a metric, a plan, a subscription, a wallet).

Checks (schemathesis's own): no 5xx (`not_a_server_error`); the status code, content type,
headers and body each conform to the document; negative data is refused with a 4xx. One
check is left out, for a principled reason (tests/reliability/README.md):
`positive_data_acceptance`, since a body valid by the schema may still break a business rule
(an unknown plan_code, a currency mismatch) and get Lago's 404/422.

Figures: `server_errors` and `schema_violations` (both 0), cases per operation. Fast tier: 4
valid and 4 negative cases per operation; deep: 50 and 50. TALLY_SEED=<n> replays a run.
"""

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from litestar import Litestar
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from adapters.settings import parse_database_url
from adapters.stores import open_ledger
from api.app import create_app
from tests.reliability.battery import report, seed, tier

pytestmark = pytest.mark.reliability

EXAMPLES = tier(4, 50)  # Per operation and per mode (valid, negative).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Litestar, str]]:
    ledger = open_ledger(parse_database_url(f"sqlite:///{tmp_path / 'tally.db'}"))
    api_key = ledger.billing.create_organization("fuzz")[1]
    app = create_app(ledger)
    with TestClient(app=app) as client:
        seed_catalog(client, {"Authorization": f"Bearer {api_key}"})
        yield app, api_key
        shutdown_lifespans()  # schemathesis started the app too: its lifespan ends first.


def seed_catalog(client: TestClient[Litestar], headers: dict[str, str]) -> None:
    """Something for the operations to find: generated keys are random, a few hit these."""
    posts: list[tuple[str, dict[str, Any]]] = [
        ("/customers", {"customer": {"external_id": "cus_1", "currency": "EUR"}}),
        (
            "/billable_metrics",
            {
                "billable_metric": {
                    "name": "Calls",
                    "code": "calls",
                    "aggregation_type": "count_agg",
                }
            },
        ),
        (
            "/plans",
            {
                "plan": {
                    "name": "Basic",
                    "code": "basic",
                    "interval": "monthly",
                    "amount_cents": 1000,
                    "amount_currency": "EUR",
                    "pay_in_advance": False,
                }
            },
        ),
        (
            "/subscriptions",
            {
                "subscription": {
                    "external_customer_id": "cus_1",
                    "plan_code": "basic",
                    "external_id": "sub_1",
                }
            },
        ),
        (
            "/wallets",
            {
                "wallet": {
                    "external_customer_id": "cus_1",
                    "currency": "EUR",
                    "rate_amount": "1",
                    "granted_credits": "10",
                }
            },
        ),
    ]
    for path, body in posts:
        response = client.post(f"/api/v1{path}", json=body, headers=headers)
        assert response.status_code == 200, (path, response.text)


def test_every_operation_fuzzed_from_the_served_document_answers_by_it(
    served: tuple[Litestar, str],
) -> None:
    app, api_key = served
    base = seed()
    # Unknown query parameters are ignored, as Lago (Rails) ignores them: not generated.
    # The API key is ours to send (R9 tests the key separately: tests/api/test_security*).
    config = schemathesis.Config.from_dict(
        {"generation": {"allow-extra-parameters": False, "with-security-parameters": False}}
    )
    schema = schemathesis.openapi.from_asgi("/openapi/openapi.json", app, config=config)
    headers = {"Authorization": f"Bearer {api_key}"}
    figures: Counter[str] = Counter()
    cases: Counter[str] = Counter()
    samples: list[str] = []
    unfuzzable: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    rng = random.Random(base)

    def record(label: str, case: Any, response: Any, failures: list[Failure]) -> None:
        server = response.status_code >= 500 or any(f.title == "Server error" for f in failures)
        figures["server_errors" if server else "schema_violations"] += 1
        if len(samples) < 12:
            titles = sorted({f"{f.title}: {f.message[:400]}" for f in failures})
            samples.append(
                f"{label} {response.status_code} {titles} body={case.body!r:.300} "
                f"query={case.query!r:.120} answer={response.text[:300]}"
            )

    def fuzz(operation: Any, mode: schemathesis.GenerationMode, case_seed: int) -> None:
        label = operation.label

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=hypothesis.Verbosity.quiet,
        )
        @hypothesis.seed(case_seed)
        def run(case: schemathesis.Case) -> None:
            cases[label] += 1
            response = case.call(headers=headers)
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except FailureGroup as group:
                record(label, case, response, list(group.exceptions))
            except Failure as failure:
                record(label, case, response, [failure])

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode == schemathesis.GenerationMode.NEGATIVE, label
            unfuzzable.append(label)  # Nothing to negate: no parameters, no body.

    import time

    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            t0 = time.monotonic()
            fuzz(operation, mode, rng.randrange(2**32))
            print("TIME", operation.label, mode, round(time.monotonic() - t0, 2), figures)

    passed = report(
        "R9",
        "schemathesis",
        seed=base,
        runs=sum(cases.values()),
        failures={
            "server_errors": figures["server_errors"],
            "schema_violations": figures["schema_violations"],
        },
        operations=len(operations),
        cases_per_operation=round(sum(cases.values()) / max(1, len(operations)), 1),
        examples_per_mode=EXAMPLES,
        without_negative_cases=len(unfuzzable),
    )
    assert passed, "\n".join(samples)
