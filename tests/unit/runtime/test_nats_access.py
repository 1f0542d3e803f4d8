"""How a process connects to NATS: files checked before connecting, one set of options."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import nkeys
import pytest
from faststream.nats.security import NatsNKey, NatsSecurity

from canaryflow.cli.main import CliError, nats_authorization
from canaryflow.runtime.nats_access import NatsAccess, NatsAccessError
from canaryflow.runtime.settings import Settings
from canaryflow_contracts import Subjects
from canaryflow_contracts.identities import permissions


def _seed(tmp_path: Path) -> Path:
    path = tmp_path / "planner.nk"
    path.write_bytes(nkeys.encode_seed(b"\x01" * 32, nkeys.PREFIX_BYTE_USER))
    return path


def test_a_named_file_that_is_missing_stops_the_service_with_its_variable(tmp_path: Path) -> None:
    settings = Settings(service="planner", nats_nkey_seed=str(tmp_path / "absent.nk"))
    with pytest.raises(NatsAccessError, match=r"NATS_NKEY_SEED=.*absent.nk: no such file"):
        _ = settings.nats_access
    with pytest.raises(NatsAccessError, match="NATS_TLS_CERT and NATS_TLS_KEY go together"):
        NatsAccess(tls_cert=str(_seed(tmp_path)))


def test_no_files_means_a_plain_connection_with_the_identitys_inbox() -> None:
    access = Settings(service="metrics-watcher").nats_access
    assert access.client_options() == {"inbox_prefix": "_INBOX_metrics_watcher"}
    assert access.broker_options() == {"inbox_prefix": "_INBOX_metrics_watcher"}
    assert NatsAccess().client_options() == {}  # admin: NATS's own inbox


def test_the_broker_and_the_client_get_the_same_key_and_tls(tmp_path: Path) -> None:
    seed = _seed(tmp_path)
    ca = Path(ssl.get_default_verify_paths().cafile or "")
    if not ca.is_file():
        pytest.skip("no system CA bundle to stand in for a CA file")
    access = NatsAccess("planner", tls_ca=str(ca), nkey_seed=str(seed))

    client = access.client_options()
    broker = access.broker_options()

    assert client["nkeys_seed"] == str(seed)
    assert isinstance(client["tls"], ssl.SSLContext)
    assert client["tls"].verify_mode == ssl.CERT_REQUIRED
    security = broker["security"]
    assert isinstance(security, NatsNKey)
    assert security.seed == str(seed)
    assert isinstance(security.ssl_context, ssl.SSLContext)
    tls_only = NatsAccess("planner", tls_ca=str(ca)).broker_options()["security"]
    assert type(tls_only) is NatsSecurity


def test_the_authorization_block_is_refused_without_a_valid_identity_and_key() -> None:
    subjects = Subjects("shop")
    key = "U" + "A" * 55
    with pytest.raises(CliError, match="no identity 'auditor'"):
        nats_authorization(subjects, [f"auditor={key}"])
    with pytest.raises(CliError, match="a public user NKey is U and 55 base32"):
        nats_authorization(subjects, ["planner=SUAAAA"])
    with pytest.raises(CliError, match="at least one identity"):
        nats_authorization(subjects, [])
    printed = nats_authorization(subjects, [f"planner={key}"])
    assert printed.startswith("authorization: {")
    assert "shop.release.planned.v1.*" in printed
    (user,) = json.loads(printed.removeprefix("authorization: "))["users"]
    assert user == {"nkey": key, "permissions": permissions("planner", subjects).as_nats()}
