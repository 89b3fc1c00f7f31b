"""What every child process of the server does: end when the server is gone.

The UMAP worker (``projection_worker``) and each run's training process (``process_jobs``)
are spawned by the server. A child blocked on its queue or pipe would otherwise outlive a
server that died, holding its memory (about 1 GB for the UMAP worker).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading


def _exit_when_gone(sentinel: int, code: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(code)


def end_with_parent(code: int) -> None:
    """Start a daemon thread that ends this process with ``code`` once its parent is gone.

    Nothing happens in a process that multiprocessing did not start.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_when_gone, args=(parent.sentinel, code), name="end-with-parent",
            daemon=True,
        ).start()  # fmt: skip
