"""File-system helpers shared by the writers of outputs."""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process's umask (files written through ``tempfile`` must be chmod-ed to follow it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
