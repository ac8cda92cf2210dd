"""User-facing errors: one clear line (what is wrong, how to fix it) and a non-zero exit.

``NnunetClError`` subclasses ``SystemExit`` on purpose: raised anywhere (our CLI or a trainer running
inside ``nnUNetv2_train``) it ends the program with its message on stderr and exit code 1, without a
traceback, and generic ``except Exception`` blocks do not swallow it.
"""

from __future__ import annotations


class NnunetClError(SystemExit):
    def __init__(self, message: str):
        self.message = message
        super().__init__(f"nnunet_cl: error: {message}")

    def __str__(self) -> str:
        return self.message


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt (``raise_terminated`` as the handler) so a run ends through the
    same path as Ctrl-C: one line saying what is kept and how to continue."""


def raise_terminated(signum, frame):
    raise Terminated()
