"""The server's child processes: started without its ``__main__``, ended with it.

The UMAP worker (``projection_worker``) and each run's training process (``process_jobs``)
are spawned by the server. A child blocked on its queue or pipe would otherwise outlive a
server that died, holding its memory (about 1 GB for the UMAP worker): ``end_with_parent``.
"""

from __future__ import annotations

import importlib.machinery
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import sys
import threading
import types

_MAIN_LOCK = threading.Lock()


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


def start_without_main(process: multiprocessing.process.BaseProcess) -> None:
    """``process.start()`` (a spawned one), without the child running this ``__main__``.

    A spawned child first runs its parent's main script again (as ``__mp_main__``), unless
    that module was run with ``-m``. In the Streamlit server ``__main__`` is the page script
    of the last run (Streamlit's ScriptRunner installs it), so every child ran the app's page
    before its own work; after an AppTest, that script's body, which fails there. For the
    moment of the start, ``__main__`` is a stand-in named as run with ``-m``
    (``dml_core.__main__``), which spawn does not run. A script run that installed its own
    ``__main__`` meanwhile keeps it.
    """
    stand_in = types.ModuleType("__main__")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("dml_core.__main__", None)
    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = stand_in
        try:
            process.start()
        finally:
            if sys.modules.get("__main__") is stand_in and main is not None:
                sys.modules["__main__"] = main
