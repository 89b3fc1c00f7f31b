"""Torch's process-wide thread count, as tests read it."""

from __future__ import annotations

import threading

import torch


def fresh_thread_count() -> int:
    """Torch's thread count as a thread started now sees it (the process-wide setting:
    ``torch.set_num_threads`` also sets the count that threads adopt at their first op)."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]
