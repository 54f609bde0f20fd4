"""Bounds on what containerd sends: keys, names and labels are untrusted input.

containerd itself limits a label's key and value to 4096 bytes together; lcow also bounds
their number and total size so that a client cannot grow the metastore without limit, and
refuses NUL (SQLite and the logs would cut the text there). Messages quote what was sent as it
is; the gRPC boundary and the log formatter escape it when it is printed.
"""

from __future__ import annotations

from collections.abc import Mapping

from lcow.errors import InvalidArgument

__all__ = ["MAX_KEY_BYTES", "MAX_LABELS", "MAX_LABEL_BYTES", "check_key", "check_labels"]

#: Longest key or name (containerd's are ``<namespace>/<seq>/<name>``, a few hundred bytes).
MAX_KEY_BYTES = 4096
#: Most labels on one snapshot.
MAX_LABELS = 256
#: Longest key + value of one label (containerd's own rule).
MAX_LABEL_BYTES = 4096
#: Largest total of a snapshot's labels.
MAX_LABELS_TOTAL = 64 * 1024


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_key(key: str, what: str = "key") -> str:
    """Return ``key`` if it is a usable snapshot key or name.

    Raises:
        InvalidArgument: empty, too long, or holding a NUL character.
    """
    if not key:
        raise InvalidArgument(f"snapshot {what} must not be empty", subject=what)
    shown = key[:64]
    if _size(key) > MAX_KEY_BYTES:
        raise InvalidArgument(
            f"snapshot {what} {shown}...: longer than {MAX_KEY_BYTES} bytes", subject=shown
        )
    if "\0" in key:
        raise InvalidArgument(f"snapshot {what} {shown}: holds a NUL character", subject=shown)
    return key


def check_labels(labels: Mapping[str, str], subject: str) -> dict[str, str]:
    """Return ``labels`` as a plain dict if they respect the bounds, without the labels whose
    value is empty (containerd's metastore drops them: an empty value unsets a label).

    Raises:
        InvalidArgument: too many, too large, an empty key or a NUL character (the message
            names ``subject`` and the label, escaped).
    """
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            f"snapshot {subject}: {len(labels)} labels, more than {MAX_LABELS}",
            subject=subject,
        )
    total = 0
    for key, value in labels.items():
        size = _size(key) + _size(value)
        total += size
        shown = key[:64]
        if not key:
            raise InvalidArgument(f"snapshot {subject}: a label with an empty key", subject=subject)
        if size > MAX_LABEL_BYTES:
            raise InvalidArgument(
                f"snapshot {subject}: label {shown}: {size} bytes, more than {MAX_LABEL_BYTES}",
                subject=subject,
            )
        if "\0" in key or "\0" in value:
            raise InvalidArgument(
                f"snapshot {subject}: label {shown}: holds a NUL character",
                subject=subject,
            )
    if total > MAX_LABELS_TOTAL:
        raise InvalidArgument(
            f"snapshot {subject}: labels of {total} bytes, more than {MAX_LABELS_TOTAL}",
            subject=subject,
        )
    return {k: v for k, v in labels.items() if v}  # containerd stores no empty value
