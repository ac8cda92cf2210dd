"""One run per folder: an exclusive lock on ``<folder>/.nnunet_cl.lock`` for as long as a run writes there.

The lock is ``fcntl.flock`` on that file, so the kernel releases it when its holder dies, whatever the
cause (SIGKILL included). The file holds one line naming the holder (PID, host, start time, what it is)
for the refusal message. A clean exit removes the file; a file left behind by a killed holder is a stale
lock: the next run takes it over with a warning naming the dead holder.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from datetime import datetime

from nnunet_cl.errors import NnunetClError

LOCK_NAME = ".nnunet_cl.lock"


class FolderLock:
    """``with FolderLock(folder, "nnunet_cl pretrain"):`` -- refused (one line, exit 1) while another holds it."""

    def __init__(self, folder: str, what: str, fix: str = "wait for it to finish or stop it"):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.what = what
        self.fix = fix
        self.fd = None

    def acquire(self) -> None:
        try:
            os.makedirs(self.folder, exist_ok=True)
            self._acquire()
        except OSError as error:
            raise NnunetClError(f"cannot lock {self.folder} ({error.strerror}); check its permissions or use "
                                "another folder") from None

    def _acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd) or "holder unknown"
                os.close(fd)
                raise NnunetClError(f"{self.folder} is in use by another run ({holder}); {self.fix}, or use "
                                    "another folder") from None
            # A holder that finished removed the file between our open and flock: lock a fresh file instead.
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        stale = _read(fd)
        if stale:
            print(f"WARNING: taking over the stale lock {self.path} of {stale} (that process is gone: killed or "
                  "crashed)", file=sys.stderr, flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {datetime.now():%Y-%m-%d %H:%M:%S}"
                      f": {self.what}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)      # while still holding it: nobody else can have locked this file
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()
