"""Shared test settings: two CPU threads, as on the CI machine."""

from __future__ import annotations

import torch

torch.set_num_threads(2)
