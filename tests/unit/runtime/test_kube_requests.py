"""What kube's raw JSON access sends and returns through the kubernetes client's ApiClient.

kube._send builds each request with ``ApiClient.param_serialize`` and sends it with
``ApiClient.call_api``: methods the client has had only since 37.0 (the generator it moved to),
and not the typed API's. These tests answer from a loopback HTTP server standing in for the
API server, to see the requests as they leave: a client release that changes either method
fails here, not first on the stack. What the API server does with them is the integration and
end-to-end tests' business.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from canaryflow.runtime import kube

TOKEN = "test-token"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: Any


class _ApiServer(BaseHTTPRequestHandler):
    seen: ClassVar[list[Seen]] = []
    answers: ClassVar[list[tuple[int, dict[str, Any]]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        _ApiServer.seen.append(
            Seen(
                self.command,
                url.path,
                parse_qsl(url.query),
                {key.lower(): value for key, value in self.headers.items()},
                json.loads(raw) if raw else None,
            )
        )
        status, body = _ApiServer.answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[client.ApiClient]:
    _ApiServer.seen, _ApiServer.answers = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    configuration.api_key = {"authorization": TOKEN}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(configuration) as api_client:
        yield api_client
    server.shutdown()
    thread.join(timeout=5)


def _deployment(**extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "7"},
        "spec": {"replicas": 2, "aFieldThisClientDoesNotKnow": {"kept": True}},
        **extra,
    }


def test_a_read_is_a_get_with_the_token_and_returns_the_json_as_sent(
    api: client.ApiClient,
) -> None:
    _ApiServer.answers.append((200, _deployment()))

    assert kube.read_deployment(api, "shop", "web") == _deployment()  # unknown fields too
    (seen,) = _ApiServer.seen
    assert (seen.method, seen.path) == ("GET", "/apis/apps/v1/namespaces/shop/deployments/web")
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["accept"] == "application/json"
    assert seen.body is None


def test_a_missing_object_reads_as_none_and_another_error_raises_with_its_status(
    api: client.ApiClient,
) -> None:
    _ApiServer.answers += [(404, {"kind": "Status", "code": 404}), (500, {"kind": "Status"})]

    assert kube.read_deployment(api, "shop", "web") is None
    with pytest.raises(ApiException) as raised:
        kube.read_deployment(api, "shop", "web")
    assert raised.value.status == 500
    assert json.loads(raised.value.body) == {"kind": "Status"}


def test_the_writes_send_their_method_body_content_type_and_field_manager(
    api: client.ApiClient,
) -> None:
    body = _deployment()
    _ApiServer.answers += [(201, body), (200, body), (200, body), (200, {"kind": "Status"})]
    manager = [("fieldManager", kube.FIELD_MANAGER)]

    assert kube.create_deployment(api, body) == body
    assert kube.replace_deployment(api, body) == body
    assert kube.patch_deployment(api, "shop", "web", {"spec": {"replicas": None}}) == body
    assert kube.delete_deployment(api, "shop", "web", "u-1")

    create, replace, patch, delete = _ApiServer.seen
    collection = "/apis/apps/v1/namespaces/shop/deployments"
    assert (create.method, create.path, create.query) == ("POST", collection, manager)
    assert (replace.method, replace.path, replace.query) == ("PUT", f"{collection}/web", manager)
    assert create.body == replace.body == body
    assert (patch.method, patch.path, patch.query) == ("PATCH", f"{collection}/web", manager)
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": None}}  # None sent as null: it removes the key
    assert (delete.method, delete.path) == ("DELETE", f"{collection}/web")
    assert delete.body["propagationPolicy"] == "Foreground"
    assert delete.body["preconditions"] == {"uid": "u-1"}
    for write in (create, replace, delete):
        assert write.headers["content-type"] == "application/json"
        assert write.headers["authorization"] == f"Bearer {TOKEN}"
