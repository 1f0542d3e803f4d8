"""Identifier rules shared by events, subjects and state keys.

A release id is the last token of every subject of that release, so it must be a valid NATS
token (no dots, no wildcards, no spaces); we also keep it short and lower-case so it reads well
in logs, Jaeger and Kubernetes annotations.
"""

import hashlib
import re

RELEASE_ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_RELEASE_ID = re.compile(RELEASE_ID_PATTERN)
# A request id that cannot be a subject token is keyed by "r-" and hex digits of its hash.
HASHED_TOKEN_PREFIX = "r-"
_HASHED_TOKEN_HEX = 40
# Kubernetes names: namespaces are DNS labels; Deployment names are DNS subdomains.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# An OCI image reference: [registry[:port]/]path[:tag][@digest]. Checked loosely but strictly
# enough to refuse whitespace, upper-case repositories and empty tags.
IMAGE_PATTERN = (
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)

_DIGEST_CHARS = 12


def is_release_id(value: str) -> bool:
    """Whether ``value`` can be a release id (and so a subject token and a state key)."""
    return _RELEASE_ID.fullmatch(value) is not None


def request_token(request_id: str) -> str:
    """The subject token an answer to the request ``request_id`` (its envelope id) is keyed by.

    A request id that is itself a valid release id (a uuid's hex, ``ci-8812``) is its own
    token, so a requester reads the answer's subject at a glance; any other id (upper case,
    dots, spaces, any non-ASCII letter) could break the subject, so it becomes ``r-`` and the
    first 40 hex digits of its UTF-8 SHA-256, which a requester computes in any language.
    """
    if is_release_id(request_id):
        return request_id
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
    return HASHED_TOKEN_PREFIX + digest[:_HASHED_TOKEN_HEX]


def version_of(image: str) -> str:
    """The version label of an image reference, as metrics and policies name versions.

    The tag when there is one (also when a digest follows it); for a reference pinned only by
    digest, ``<algorithm>-<first 12 hex digits>`` (a valid label value, distinct per build);
    otherwise ``latest``. A registry port (``host:5000/app``) is not a tag.
    """
    name, _, digest = image.strip().partition("@")
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash and colon < len(name) - 1:
        return name[colon + 1 :]
    if digest:
        algorithm, _, hex_digits = digest.partition(":")
        if hex_digits:
            return f"{algorithm}-{hex_digits[:_DIGEST_CHARS]}"
        return algorithm or "latest"
    return "latest"
