"""Turning an image into stored renditions: shared by the worker (automatic covers) and
the admin API (pins and uploads)."""

from __future__ import annotations

import hashlib

from . import imaging
from .queries import StoredRendition
from .storage import Storage


def render_and_store(storage: Storage, data: bytes, *, max_pixels: int) -> list[StoredRendition]:
    """Render every size and format and put them under keys derived from their bytes, so
    a key never changes meaning and a rerun after a crash writes the same keys."""
    stored = []
    for r in imaging.render_renditions(data, max_pixels=max_pixels):
        digest = hashlib.sha256(r.data).hexdigest()
        key = f"renditions/{digest[:2]}/{digest}.{r.format}"
        storage.put(key, r.data, content_type=r.content_type)
        stored.append(
            StoredRendition(
                size=r.size,
                format=r.format,
                key=key,
                etag=digest[:32],
                content_type=r.content_type,
                width=r.width,
                height=r.height,
                byte_size=len(r.data),
            )
        )
    return stored
