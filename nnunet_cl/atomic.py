"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace``.

A crash (or SIGKILL) at any moment leaves either the old file or the new one, never a truncated one --
and possibly a temp file ``.<name>.<random>.tmp`` beside it, which ``remove_stale_temps`` deletes when
the writer starts again. Every atomic write of the package goes through ``atomic_target``, so this is
the only temp naming. The file gets the permissions a plain ``open(path, "w")`` would give it (0666 minus the
umask), as nnU-Net's own files: ``mkstemp`` alone would make it 0600, unreadable for a lab group sharing
``nnUNet_results``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager

import torch

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_target(path: str):
    """``with atomic_target(path) as tmp:`` write ``tmp``; on success it replaces ``path``, on error it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=folder)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temps(folder: str) -> list:
    """Delete the temps that interrupted atomic writes (files) or copies (folders, e.g. a benchmark's adoption of
    a pre-training) left in ``folder``; returns their names."""
    removed = []
    for stale in sorted(glob.glob(os.path.join(glob.escape(folder), "." + "*" + TEMP_SUFFIX))):
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale)
        else:
            os.remove(stale)
        removed.append(os.path.basename(stale))
    return removed


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc), else via a set-and-restore."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path: str) -> None:
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_json(obj, path: str) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)


def link_or_copy(source: str, target: str) -> str:
    """A hard link ``target`` of ``source`` (no copy of the bytes); a copy on file systems without links. Safe
    for files that are only ever replaced atomically, never rewritten in place (every file this package writes)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target
