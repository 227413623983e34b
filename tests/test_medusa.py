"""Medusa's own JS SDK (@medusajs/js-sdk from npm, pinned with a lockfile in tests/medusa)
drives a real server on both databases (SPEC 8.3, 8.4): JWT login through
/auth/user/emailpass, the `apiKey` option with an `sk_` key, customers with Medusa's fields,
adjust with include_history, the balance, and errors as the SDK surfaces them (status and
`message` only).

The Node script tests/medusa/drive.mjs does the driving and prints what it saw as JSON; the
assertions are here. node_modules is installed with `npm ci` when missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support import ADMIN_EMAIL, ADMIN_PASSWORD, Backend, routed_operations

SDK_DIR = Path(__file__).parent / "medusa"
SDK_VERSION = "2.21.2"
INSTALL_TIMEOUT_S = 300
SCRIPT_TIMEOUT_S = 120
IN_CI = os.environ.get("CI", "").lower() == "true"
DELTA_MESSAGE = "delta must be a non-zero number"
FLOAT_MESSAGE = (
    "delta must have at most 2 decimal places; 0.30000000000000004 has 17"
    " (a binary float's rounding, as 0.1 + 0.2 gives in JavaScript?)"
)


@pytest.fixture(scope="session")
def medusa_sdk() -> Path:
    """tests/medusa with its node_modules, installed exactly from the lockfile if missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if IN_CI:
            pytest.fail("node and npm are required under CI for the Medusa SDK test")
        pytest.skip("node and npm are not installed")
    installed = SDK_DIR / "node_modules" / "@medusajs" / "js-sdk" / "package.json"
    if not installed.exists():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=SDK_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    assert json.loads(installed.read_text())["version"] == SDK_VERSION
    return SDK_DIR


def has_refresh_and_me() -> bool:
    """Whether this build has Medusa's POST /auth/token/refresh and GET /admin/users/me."""
    return {"POST /auth/token/refresh", "GET /admin/users/me"} <= routed_operations()


def drive(sdk_dir: Path, backend: Backend, scenario: str) -> dict[str, Any]:
    """Runs drive.mjs for `scenario` against the backend; what it printed, decoded."""
    env = {
        **os.environ,
        "LOYALTY_WITH_REFRESH": "1" if has_refresh_and_me() else "0",
        "LOYALTY_URL": backend.server.base_url,
        "LOYALTY_EMAIL": ADMIN_EMAIL,
        "LOYALTY_PASSWORD": ADMIN_PASSWORD,
        "LOYALTY_SCENARIO": scenario,
        "LOYALTY_RUN": uuid.uuid4().hex[:12],
    }
    result = subprocess.run(
        ["node", "drive.mjs"],
        cwd=sdk_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"drive.mjs failed:\n{result.stdout}\n{result.stderr}"
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def error(status: int, message: str) -> dict[str, Any]:
    """A FetchError as the script reports it."""
    return {"fetch_error": True, "status": status, "message": message}


def assert_client_work(out: dict[str, Any]) -> None:
    """What drive() in the script did with one client: each step's result."""
    customer = out["customer"]
    assert customer["phone"] == "+44 20 7946 0000"
    assert customer["company_name"] == "Analytical Engines Ltd"
    assert list(customer["metadata"]) == ["medusa_customer_id"]
    adjusted = out["adjust"]
    assert adjusted["customer_id"] == customer["id"]
    assert adjusted["balance_after"] == 150.5
    history = adjusted["history"]
    assert [(item["id"], item["delta"], item["reason"]) for item in history] == [
        (adjusted["id"], 150.5, "order")
    ]
    # The same Idempotency-Key replays the first answer, through the SDK's headers option.
    assert out["replay"] == out["adjust"]
    assert out["balance"]["balance"] == 150.5
    assert out["balance"]["customer_id"] == customer["id"]
    # JavaScript's 0.1 + 0.2 goes out as 0.30000000000000004: the message says so on its own.
    assert out["float_error"] == error(400, FLOAT_MESSAGE)
    assert out["zero_error"] == error(400, DELTA_MESSAGE)
    assert out["overdraw_error"]["status"] == 400
    assert out["overdraw_error"]["message"] == (
        "Insufficient points: the current balance is 150.5, which cannot cover -1000"
    )
    unknown = out["unknown_customer_error"]
    assert unknown["status"] == 404
    assert unknown["message"].startswith("Customer with id: cus_nobody_")
    assert out["balance_after_errors"] == out["balance"]


def test_the_sdk_logs_in_with_emailpass_and_drives_the_service(
    medusa_sdk: Path, backend: Backend
) -> None:
    """sdk.auth.login("user", "emailpass") gets our JWT, which the SDK then sends as a Bearer
    on every sdk.client.fetch, provided it may keep it: in Node the SDK's default storage
    ("nostore", as there is no localStorage) drops it, so the next call is 401. Once the build
    has them, sdk.auth.refresh() and sdk.admin.user.me() work with that token too."""
    out = drive(medusa_sdk, backend, "jwt")
    assert out["default_login"] == "string"
    assert out["default_storage_error"] == error(401, "Authentication required")
    assert out["wrong_password_error"]["status"] == 401
    assert out["wrong_password_error"]["fetch_error"] is True
    assert out["token_parts"] == 3
    assert out["stored_token_is_returned"] is True
    assert_client_work(out)
    if has_refresh_and_me():
        assert out["refreshed_token_parts"] == 3
        assert out["refreshed_token_is_stored"] is True
        assert out["me"]["user"]["email"] == ADMIN_EMAIL
    for request in out["sent"]:
        assert request["authorization"].startswith("Bearer "), request
        assert request["content_type"] == "application/json", request


def test_the_sdk_with_an_api_key_drives_the_service(medusa_sdk: Path, backend: Backend) -> None:
    """new Medusa({apiKey: "sk_…"}) sends `Authorization: Basic base64("sk_…:")` on every
    request; the service accepts it for the same work, and refuses it once revoked."""
    if "POST /admin/api-keys" not in routed_operations():
        pytest.skip("secret API keys (SPEC 8.1) are not in this build yet")
    out = drive(medusa_sdk, backend, "api_key")
    assert out["api_key"]["prefix"] == "sk_"
    assert out["authorization_headers"] == 1
    assert out["authorization_scheme"] == "Basic"
    assert out["authorization_is_token_colon"] is True
    assert_client_work(out)
    assert out["revoked_error"]["status"] == 401
    assert out["revoked_error"]["fetch_error"] is True
