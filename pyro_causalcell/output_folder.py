"""An output folder that appears whole or not at all, and never replaces files it did not write."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._fs import current_umask

MARKER = ".causalcell"


class OutputFolderError(ValueError):
    """The output folder cannot be used as asked (a file, not empty, holds the user's files)."""


def check_output_folder(path: Path, overwrite: bool) -> None:
    """Raise unless writing a run's outputs to ``path`` would lose nothing unasked.

    ``path`` may be missing or empty; with ``overwrite`` it may also hold a previous run's
    outputs (recognised by the marker file every run writes), and nothing else.
    """
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"--out {path} is a file; name a folder (it is created if "
                                "missing)")
    if not path.is_dir():
        return
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    if not overwrite:
        raise OutputFolderError(f"--out {path} is not empty ({_preview(entries)}); choose a new "
                                "folder, or pass --overwrite to replace a previous run's outputs")
    if MARKER not in entries:
        raise OutputFolderError(f"--out {path} holds files causalcell did not write "
                                f"({_preview(entries)}); --overwrite only replaces a previous "
                                "run's folder. Choose a new folder.")


@contextlib.contextmanager
def output_folder(path: Path, *, overwrite: bool = False,
                  provenance: dict | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it into place when the block succeeds.

    On an exception the temporary folder is removed and ``path`` is left as it was. A
    previous run's folder at ``path`` (only with ``overwrite``) is replaced as a whole.

    Raises
    ------
    OutputFolderError
        See :func:`check_output_folder`.
    """
    path = Path(path)
    check_output_folder(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp creates 0700
    try:
        yield staging
        (staging / MARKER).write_text(json.dumps(provenance or {}, indent=2) + "\n")
        _publish(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    if not path.exists():
        os.replace(staging, path)
        return
    previous = path.with_name(f".{path.name}.previous-{staging.name.rsplit('-', 1)[-1]}")
    os.replace(path, previous)
    os.replace(staging, path)
    shutil.rmtree(previous, ignore_errors=True)


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}{', ...' if len(names) > limit else ''}: {len(names)} entries"
