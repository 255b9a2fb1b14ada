"""Errors of keys, repository and release publishing; each one line with what to do."""

from __future__ import annotations

from fieldbox.errors import FieldboxError


class ReleaseError(FieldboxError):
    """A release cannot be published or the repository cannot be read or signed."""


class KeysError(ReleaseError):
    """A signing key is missing, unreadable, exposed (file mode) or already exists."""
