"""VIES, the EC's VAT number validation service: its REST API, and a local fake of it for tests.

HttpVies POSTs {"countryCode", "vatNumber", "requesterMemberStateCode", "requesterNumber"} to
<base>/check-vat-number and reads {"valid", "countryCode", "vatNumber", "requestDate",
"requestIdentifier", "name", "address", "userError"}; VIES reports errors as
{"actionSucceed": false, "errorWrappers": [{"error": "MS_UNAVAILABLE", "message": ...}]}, with
an HTTP error status or 200, or through userError. Every failure becomes a ViesError: the use
case retries, and never reads an error as "invalid".

TALLY_VIES_URL names the base (default: the EC's). FakeVies serves the same protocol on a
loopback port, so tests and local runs never reach the internet.
"""

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from adapters.settings import SettingsError
from application.vat import ViesAnswer, ViesError

EC_VIES_URL: Final = "https://ec.europa.eu/taxation_customs/vies/rest-api"
CHECK_PATH: Final = "/check-vat-number"
# VIES answers within seconds or not at all; a longer wait only holds up the checks behind it.
VIES_TIMEOUT_S: Final = 10.0
# Some member states disclose neither name nor address: VIES answers "---".
_UNDISCLOSED: Final = "---"


class HttpVies:
    """The ViesPort on VIES's REST API."""

    def __init__(self, base_url: str = EC_VIES_URL, timeout_s: float = VIES_TIMEOUT_S) -> None:
        self.endpoint = base_url.rstrip("/") + CHECK_PATH
        self.timeout_s = timeout_s

    def check_vat_number(
        self, country_code: str, vat_number: str, requester: tuple[str, str] | None = None
    ) -> ViesAnswer:
        body: dict[str, str] = {"countryCode": country_code, "vatNumber": vat_number}
        if requester is not None:
            body["requesterMemberStateCode"], body["requesterNumber"] = requester
        request = urllib.request.Request(
            self.endpoint,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:  # A redirect too: VIES's maintenance page.
            status, payload = error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise ViesError("NETWORK_ERROR", str(error)) from None
        return parse_answer(status, payload)


def parse_answer(status: int, payload: bytes) -> ViesAnswer:
    """VIES's JSON answer, or the ViesError it stands for."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise ViesError("HTTP_ERROR", f"HTTP {status}, not JSON") from None
    if not isinstance(data, dict):
        raise ViesError("HTTP_ERROR", f"HTTP {status}, not a JSON object")
    wrappers = data.get("errorWrappers")
    if data.get("actionSucceed") is False or wrappers:
        first = wrappers[0] if isinstance(wrappers, list) and wrappers else {}
        first = first if isinstance(first, dict) else {}
        raise ViesError(str(first.get("error") or "HTTP_ERROR"), str(first.get("message") or ""))
    if status != 200:
        raise ViesError("HTTP_ERROR", f"HTTP {status}")
    user_error = data.get("userError")
    if user_error not in (None, "VALID", "INVALID"):
        raise ViesError(str(user_error))
    valid, country_code = data.get("valid"), data.get("countryCode")
    if not isinstance(valid, bool) or not isinstance(country_code, str):
        raise ViesError("HTTP_ERROR", "an answer without valid or countryCode")
    return ViesAnswer(
        valid=valid,
        country_code=country_code,
        vat_number=str(data.get("vatNumber") or ""),
        request_date=_instant(data.get("requestDate")),
        consultation_number=_text(data.get("requestIdentifier")),
        name=_text(data.get("name")),
        address=_text(data.get("address")),
    )


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or value.strip() in ("", _UNDISCLOSED):
        return None
    return value.strip()


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).astimezone(UTC)


def vies_from_env(environ: Mapping[str, str] | None = None) -> HttpVies:
    """TALLY_VIES_URL: the REST API's base (the fake's url in tests); default the EC's."""
    environ = os.environ if environ is None else environ
    url = environ.get("TALLY_VIES_URL", "").strip() or EC_VIES_URL
    if not url.startswith(("https://", "http://")):
        raise SettingsError(
            f"TALLY_VIES_URL={url!r}: the base of VIES's REST API, e.g. {EC_VIES_URL}."
        )
    return HttpVies(url)


class FakeVies:
    """VIES's REST API on a loopback port, for tests: same path, same JSON, no internet.

    register() makes a number valid; fail_next() queues error codes answered before it;
    "HTML" answers a 503 page, as VIES's maintenance does. Numbers are keyed with their prefix
    ("FR40303265045"). With a requester, a valid answer carries a consultation number.
    """

    def __init__(self) -> None:
        self.valid: dict[str, tuple[str | None, str | None]] = {}
        self.failures: dict[str, list[str]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._consultations = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/taxation_customs/vies/rest-api"

    def register(self, number: str, name: str | None = None, address: str | None = None) -> None:
        with self._lock:
            self.valid[number] = (name, address)

    def fail_next(self, number: str, *codes: str) -> None:
        with self._lock:
            self.failures.setdefault(number, []).extend(codes)

    def start(self) -> "FakeVies":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeVies":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def answer(self, body: Any) -> tuple[int, dict[str, Any] | str]:
        """The status and JSON body (or HTML text) VIES would send for this request body."""
        with self._lock:
            self.requests.append(body if isinstance(body, dict) else {})
            if not isinstance(body, dict):
                return 400, _error("INVALID_INPUT")
            country, national = body.get("countryCode"), body.get("vatNumber")
            if not (isinstance(country, str) and len(country) == 2 and national):
                return 400, _error("INVALID_INPUT")
            number = f"{country}{national}"
            queued = self.failures.get(number)
            if queued:
                code = queued.pop(0)
                return (
                    (503, "<html>Service unavailable</html>")
                    if code == "HTML"
                    else (
                        500,
                        _error(code),
                    )
                )
            known = number in self.valid
            name, address = self.valid.get(number, (None, None))
            consultation = ""
            if known and body.get("requesterNumber"):
                self._consultations += 1
                consultation = f"WAPIAAAAZ{self._consultations:07d}"
            return 200, {
                "countryCode": country,
                "vatNumber": national,
                "requestDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "valid": known,
                "requestIdentifier": consultation,
                "name": name or _UNDISCLOSED,
                "address": address or _UNDISCLOSED,
                "userError": "VALID" if known else "INVALID",
            }


def _error(code: str) -> dict[str, Any]:
    return {"actionSucceed": False, "errorWrappers": [{"error": code, "message": code}]}


def _handler(fake: FakeVies) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if not self.path.endswith(CHECK_PATH):
                self._send(404, _error("NOT_FOUND"))
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                body = None
            self._send(*fake.answer(body))

        def _send(self, status: int, body: dict[str, Any] | str) -> None:
            is_json = isinstance(body, dict)
            payload = (json.dumps(body) if is_json else str(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if is_json else "text/html")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # Tests read fake.requests, not a log.

    return Handler
