"""Signed webhooks from `tally serve`, set up and verified through Lago's official client."""

import base64
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import jwt
import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import Customer, Wallet, WebhookEndpoint

from application.webhooks import KEY_REFRESH_S
from tests.conftest import ROOT, Server
from tests.webhook_receiver import Received, Receiver, verify, verify_by_kid, wait_until

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


def tally_cli(server: Server, *args: str) -> str:
    """Run `tally ARGS` on the server's store, as an operator does; its standard output."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env={**os.environ, "TALLY_DATABASE_URL": server.settings.database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def of_types(receiver: Receiver, types: list[str]) -> list[Received]:
    return [r for r in receiver.snapshot() if r.payload["webhook_type"] in types]


def named(receiver: Receiver, name: str) -> list[Received]:
    return [
        r for r in of_types(receiver, ["wallet.updated"]) if r.payload["wallet"]["name"] == name
    ]


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
    hmac_key = tally_cli(server, "webhooks", "hmac-key", "e2e")
    received = receiver.snapshot()
    for item in received:
        verify(item, public_key, API_URL, hmac_key)
    for path in ("/jwt", "/hmac"):
        names = [r.payload["customer"]["name"] for r in received if r.path == path]
        types = [r.payload["webhook_type"] for r in received if r.path == path]
        assert (names, types) == (["Ada", "Grace"], ["customer.created", "customer.updated"])
    assert receiver.refused == 3

    # A wallet: its webhooks verify with the same key, and are the API's objects.
    wallet = lago.wallets.create(
        Wallet(
            external_customer_id="cus_1",
            currency="EUR",
            rate_amount="1",
            name="Credits",
            granted_credits="10",
        )
    )
    wallet_types = ["wallet.created", "wallet_transaction.created"]
    wait_until(lambda: len(of_types(receiver, wallet_types)) == 4, timeout_s=15)
    for item in of_types(receiver, wallet_types):
        verify(item, public_key, API_URL, hmac_key)
    [sent_wallet, _] = [r.payload["wallet"] for r in of_types(receiver, ["wallet.created"])]
    assert (sent_wallet["lago_id"], sent_wallet["balance_cents"]) == (wallet.lago_id, 1000)

    # Both keys rotate: later webhooks verify with the new keys, earlier ones with the retired
    # RSA key, which Tally's extension lists with its kid for the grace period.
    rotated = tally_cli(server, "webhooks", "rotate-key")
    assert "New signing key" in rotated
    new_hmac_key = tally_cli(server, "webhooks", "hmac-key", "e2e", "--rotate")
    assert new_hmac_key != hmac_key
    # The server reads its keys again within KEY_REFRESH_S: rename the wallet until a rename
    # arrives signed with both new keys.
    wait_until(lambda: lago.webhooks.public_key() != public_key, timeout_s=15)
    new_public_key = lago.webhooks.public_key()
    renames = iter(range(1000))

    def signed_with_new_keys() -> bool:
        name = f"Renamed {next(renames)}"
        lago.wallets.update(Wallet(name=name), wallet.lago_id)
        wait_until(lambda: len(named(receiver, name)) == 2, timeout_s=15)
        try:
            for item in named(receiver, name):
                verify(item, new_public_key, API_URL, new_hmac_key)
        except (AssertionError, jwt.InvalidTokenError):
            return False
        return True

    wait_until(signed_with_new_keys, timeout_s=4 * KEY_REFRESH_S)
    listed = httpx.get(
        server.url + "api/v1/webhooks/public_keys",
        headers={"Authorization": f"Bearer {server.api_key}"},
    ).json()["webhook_public_keys"]
    assert [k["status"] for k in listed] == ["current", "retired"]
    by_kid = {k["kid"]: base64.b64decode(k["public_key"]) for k in listed}
    assert by_kid[listed[1]["kid"]] == public_key
    for item in receiver.snapshot():  # Every webhook verifies with the key of its time.
        try:
            verify_by_kid(item, by_kid, API_URL, hmac_key)
        except AssertionError:
            verify_by_kid(item, by_kid, API_URL, new_hmac_key)

    updated = lago.webhook_endpoints.update(
        WebhookEndpoint(event_types=["invoice.created"]), jwt_endpoint.lago_id
    )
    assert updated.event_types == ["invoice.created"]
    lago.webhook_endpoints.destroy(hmac_endpoint.lago_id)
    with pytest.raises(LagoApiError) as error:
        lago.webhook_endpoints.find(hmac_endpoint.lago_id)
    assert error.value.response["code"] == "webhook_endpoint_not_found"
