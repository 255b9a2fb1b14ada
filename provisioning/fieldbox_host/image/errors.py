"""Errors of the image build; each is one line saying what failed and what to do."""

from __future__ import annotations

from fieldbox.errors import FieldboxError


class ImageError(FieldboxError):
    """The image cannot be built (bad input, missing host tool, failed step)."""


class HostError(ImageError):
    """The build host lacks something (a tool, binfmt, disk space, root)."""


class CacheError(ImageError):
    """A cached artefact is corrupt; it is removed and rebuilt."""
