"""Identifier rules shared by events, subjects and state keys.

A release id is the last token of every subject of that release, so it must be a valid NATS
token (no dots, no wildcards, no spaces); we also keep it short and lower-case so it reads well
in logs, Jaeger and Kubernetes annotations.
"""

RELEASE_ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
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
