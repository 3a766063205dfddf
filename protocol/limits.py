"""Size limits of the wire format, in a module of their own so that reading one imports nothing."""

from __future__ import annotations

DEFAULT_MAX_BYTES = 64 * 1024  # an envelope larger than this is refused (PayloadTooLarge)
