"""Scoped keys end to end: `tally keys create` and a real `tally serve`, driven by Lago's client."""

import os
import subprocess
import sys

import pytest
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import Customer

from tests.conftest import ROOT, Server


def create_key(server: Server, *options: str) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", "e2e", *options],
        env={**os.environ, "TALLY_DATABASE_URL": server.settings.database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.strip().splitlines()[-1]


def test_a_read_only_key_reads_and_is_refused_writes_with_lagos_403(server: Server) -> None:
    Client(api_key=server.api_key, api_url=server.url).customers.create(
        Customer(external_id="cus_1", name="Ada")
    )
    reader = Client(api_key=create_key(server, "--scope", "read_only"), api_url=server.url)
    assert reader.customers.find("cus_1").name == "Ada"
    with pytest.raises(LagoApiError) as refused:
        reader.customers.create(Customer(external_id="cus_2"))
    assert refused.value.status_code == 403
    assert refused.value.response["error"] == "Forbidden"
    assert refused.value.response["code"] == "write_action_not_allowed_for_customer"
