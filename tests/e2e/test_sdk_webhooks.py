"""Signed webhooks from `tally serve`, set up and verified through Lago's official client."""

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import Customer, WebhookEndpoint

from tests.conftest import ROOT, Server
from tests.webhook_receiver import Receiver, verify, wait_until

API_URL = "http://tally.test"


@pytest.fixture
def fast_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's delivery settings: polled often, retried within milliseconds."""
    monkeypatch.setenv("TALLY_API_URL", API_URL + "/api/v1")  # The suffix is dropped.
    monkeypatch.setenv("TALLY_WEBHOOK_POLL_S", "0.02")
    monkeypatch.setenv("TALLY_WEBHOOK_BACKOFF_BASE_S", "0.01")
    monkeypatch.setenv("TALLY_WEBHOOK_BACKOFF_CAP_S", "0.05")
    monkeypatch.setenv("TALLY_WEBHOOK_ATTEMPTS_MAX", "100")


@pytest.fixture
def lago(fast_webhooks: None, server: Server) -> Client:
    return Client(api_key=server.api_key, api_url=server.url)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(failures=3)  # Down for its first three requests.
    yield receiver
    receiver.close()


def test_webhooks_verify_with_the_key_fetched_through_the_official_client(
    lago: Client, server: Server, receiver: Receiver
) -> None:
    jwt_endpoint = lago.webhook_endpoints.create(
        WebhookEndpoint(webhook_url=receiver.url("/jwt"), signature_algo="jwt")
    )
    hmac_endpoint = lago.webhook_endpoints.create(
        WebhookEndpoint(webhook_url=receiver.url("/hmac"), signature_algo="hmac")
    )
    assert (jwt_endpoint.signature_algo, hmac_endpoint.signature_algo) == ("jwt", "hmac")
    found = lago.webhook_endpoints.find(jwt_endpoint.lago_id)
    assert found.webhook_url == receiver.url("/jwt")
    listed = lago.webhook_endpoints.find_all()
    assert {e.lago_id for e in listed["webhook_endpoints"]} == {
        jwt_endpoint.lago_id,
        hmac_endpoint.lago_id,
    }

    lago.customers.create(Customer(external_id="cus_1", name="Ada"))
    lago.customers.create(Customer(external_id="cus_1", name="Grace"))

    wait_until(lambda: len({r.key for r in receiver.snapshot()}) == 4, timeout_s=15)
    public_key = lago.webhooks.public_key()
    assert public_key.startswith(b"-----BEGIN PUBLIC KEY-----")
    # The HMAC key is never served by the API; an operator reads it with the command line.
    hmac_key = subprocess.run(
        [sys.executable, "-m", "api.cli", "webhooks", "hmac-key", "e2e"],
        env={**os.environ, "TALLY_DATABASE_URL": server.settings.database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    received = receiver.snapshot()
    for item in received:
        verify(item, public_key, API_URL, hmac_key)
    for path in ("/jwt", "/hmac"):
        names = [r.payload["customer"]["name"] for r in received if r.path == path]
        types = [r.payload["webhook_type"] for r in received if r.path == path]
        assert (names, types) == (["Ada", "Grace"], ["customer.created", "customer.updated"])
    assert receiver.refused == 3

    updated = lago.webhook_endpoints.update(
        WebhookEndpoint(event_types=["invoice.created"]), jwt_endpoint.lago_id
    )
    assert updated.event_types == ["invoice.created"]
    lago.webhook_endpoints.destroy(hmac_endpoint.lago_id)
    with pytest.raises(LagoApiError) as error:
        lago.webhook_endpoints.find(hmac_endpoint.lago_id)
    assert error.value.response["code"] == "webhook_endpoint_not_found"
