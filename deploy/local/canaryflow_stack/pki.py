"""Credentials of the local Kubernetes cluster: CA, serving certificate, service-account keys,
static tokens and kubeconfigs, all under ``.stack/kube/``.

Why generated here and kept: the API server must serve TLS that clients can verify, sign
service-account tokens (so the TokenRequest API works and tests can get narrow-role tokens),
and accept an admin token. They are created once with ``openssl`` and reused on later runs,
so a warm ``up`` keeps the same tokens and the data in etcd stays valid. Each component gets
its own identity: the controller manager and scheduler authenticate as the users Kubernetes'
default RBAC already binds (system:kube-controller-manager, system:kube-scheduler); clients,
kwok and the data plane use the admin token (group system:masters).
"""

from __future__ import annotations

import base64
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import HOST, Settings
from .errors import StackError

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "canaryflow-local"

# name -> (user, uid, groups); the admin token is what clients get in .stack/kubeconfig.
IDENTITIES: dict[str, tuple[str, str, str]] = {
    "admin": ("canaryflow-admin", "canaryflow-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", "kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", "kube-scheduler", ""),
    "kwok": ("kwok-controller", "kwok-controller", "system:masters"),
}


@dataclass(frozen=True)
class ClusterFiles:
    ca_crt: Path
    ca_key: Path
    server_crt: Path
    server_key: Path
    sa_key: Path
    sa_pub: Path
    tokens_csv: Path

    def kubeconfig(self, identity: str) -> Path:
        return self.ca_crt.parent / f"{identity}.kubeconfig"


def files(settings: Settings) -> ClusterFiles:
    d = settings.kube
    return ClusterFiles(
        ca_crt=d / "ca.crt",
        ca_key=d / "ca.key",
        server_crt=d / "apiserver.crt",
        server_key=d / "apiserver.key",
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
        tokens_csv=d / "tokens.csv",
    )


def openssl(args: list[str], cwd: Path, server: str = "kube-apiserver") -> None:
    """Run ``openssl``; a failure is the named server's (its credentials cannot be made)."""
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StackError(
            server,
            None,
            f"openssl {args[0]} failed: {result.stderr.strip()[-400:]}",
            "openssl missing or too old (OpenSSL 1.1+ is needed)",
        )


def ensure_credentials(settings: Settings) -> ClusterFiles:
    """Create whatever is missing of CA, serving cert, SA keys, tokens and kubeconfigs."""
    f = files(settings)
    d = settings.kube
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    if not (f.ca_crt.exists() and f.ca_key.exists()):
        openssl(
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f.ca_key.name,
             "-out", f.ca_crt.name, "-days", "3650", "-subj", "/CN=canaryflow-local-ca"],
            d,
        )  # fmt: skip
        f.server_crt.unlink(missing_ok=True)
    if not (f.server_crt.exists() and f.server_key.exists()):
        sans = ",".join(
            [f"IP:{HOST}", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
             "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
             "DNS:kubernetes.default.svc.cluster.local"]
        )  # fmt: skip
        ext = d / "apiserver.ext"
        ext.write_text(
            f"subjectAltName={sans}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
        )
        openssl(
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f.server_key.name,
             "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver"],
            d,
        )  # fmt: skip
        openssl(
            ["x509", "-req", "-in", "apiserver.csr", "-CA", f.ca_crt.name, "-CAkey",
             f.ca_key.name, "-CAcreateserial", "-out", f.server_crt.name, "-days", "3650",
             "-extfile", ext.name],
            d,
        )  # fmt: skip
    if not (f.sa_key.exists() and f.sa_pub.exists()):
        openssl(["genrsa", "-out", f.sa_key.name, "2048"], d)
        openssl(["rsa", "-in", f.sa_key.name, "-pubout", "-out", f.sa_pub.name], d)
    tokens = _ensure_tokens(f.tokens_csv)
    server = server_url(settings)
    for identity, token in tokens.items():
        write_kubeconfig(f.kubeconfig(identity), server, f.ca_crt, token, identity)
    write_kubeconfig(settings.kubeconfig, server, f.ca_crt, tokens["admin"], "admin")
    return f


def _ensure_tokens(path: Path) -> dict[str, str]:
    """Read the static token file, adding a random token for any identity it lacks."""
    by_user: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split(",")
            if len(parts) >= 3:
                by_user[parts[1]] = parts[0]
    tokens: dict[str, str] = {}
    lines = []
    for identity, (user, uid, groups) in IDENTITIES.items():
        token = by_user.get(user) or secrets.token_hex(24)
        tokens[identity] = token
        group_col = f',"{groups}"' if groups else ""
        lines.append(f"{token},{user},{uid}{group_col}")
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o600)
    return tokens


def admin_token(settings: Settings) -> str:
    return _ensure_tokens(files(settings).tokens_csv)["admin"]


def server_url(settings: Settings) -> str:
    return f"https://{HOST}:{settings.ports.apiserver}"


def write_kubeconfig(path: Path, server: str, ca_crt: Path, token: str, user: str) -> None:
    """A token kubeconfig for the local API server (written only when it changes)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_crt.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
    }
    text = yaml.safe_dump(doc, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)
