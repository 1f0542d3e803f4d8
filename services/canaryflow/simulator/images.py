"""Image references are the only version identity a pod carries by itself.

Tags name versions in the per-version behaviour ConfigMap and in metric labels, so the
parsing has to be exact about the cases that fool a naive split on ':', such as a registry
with a port and references pinned by digest.
"""

from __future__ import annotations

DEFAULT_TAG = "latest"
_DIGEST_CHARS = 12


def version_from_image(image: str) -> str:
    """The version label for an image reference.

    The tag when there is one (also when a digest follows it); for a reference pinned only by
    digest, ``<algorithm>-<first 12 hex digits>`` (a valid ConfigMap key and label value, and
    distinct per build, which "latest" would not be); otherwise "latest".
    """
    ref = image.strip()
    name, _, digest = ref.partition("@")
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash and colon < len(name) - 1:
        return name[colon + 1 :]
    if digest:
        algorithm, _, hex_digits = digest.partition(":")
        if hex_digits:
            return f"{algorithm}-{hex_digits[:_DIGEST_CHARS]}"
        return algorithm or DEFAULT_TAG
    return DEFAULT_TAG
