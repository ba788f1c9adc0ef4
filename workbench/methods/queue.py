"""The one queue of past embeddings the methods share: MoCo's queue of keys (SimCLR's option) and SwAV's queue of
past crops. A FIFO ring buffer whose checkpoint state loads under any world size.

Pseudo-code (MoCo, He et al. 2020; facebookresearch/moco's ``_dequeue_and_enqueue``)::

    rows = normalize(randn(K, d))              # or zeros, counted as empty (SwAV)
    logits = cat([q @ k.T, q @ rows.clone().T]) / t   # read before the enqueue: the batch never meets itself
    keys = gather(k.detach())                  # shared queue: every rank's keys, in rank order
    rows[ptr:ptr + len(keys)] = keys           # the oldest rows make room, wrapping round at K
    ptr = (ptr + len(keys)) % K

``shared=True`` (MoCo) gathers the keys of all ranks before the enqueue, so every rank holds the same queue and a
checkpoint from any rank loads under any world size. ``shared=False`` (SwAV) keeps a queue per rank (the caller
sizes it ``queue_length // world_size``; SwAV joins the ranks through Sinkhorn's all-reduced sums); a saved queue of
another length keeps its newest rows that fit. The pointer and fill count live in Python ints in the loop (no host
sync) and in buffers in checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.methods.base import gather


class Queue(nn.Module):
    """``heads`` FIFO queues of ``length`` rows of dimension ``dim`` (buffer ``rows`` [heads, length, dim]).

    ``random_init``: start full of random unit vectors, as MoCo does (a fixed shape from the first step);
    otherwise start with zero rows counted as empty (``fill`` rows hold embeddings). Callers enqueue
    L2-normalised embeddings; the queue stores them detached, in float32."""

    def __init__(self, heads: int, length: int, dim: int, shared: bool = False, random_init: bool = False):
        super().__init__()
        rows = torch.randn(heads, length, dim) if random_init else torch.zeros(heads, length, dim)
        self.register_buffer("rows", F.normalize(rows, dim=-1) if random_init else rows)
        self.shared = shared
        self._ptr, self._fill = 0, length if random_init else 0
        self.register_buffer("ptr", torch.tensor(self._ptr))
        self.register_buffer("fill", torch.tensor(self._fill))
        self._register_load_state_dict_pre_hook(self._fit)
        self.register_load_state_dict_post_hook(_read_counts)

    @property
    def length(self) -> int:
        return self.rows.shape[1]

    @property
    def full(self) -> bool:
        """Every row holds an embedding (decided on the host: no sync)."""
        return self._fill >= self.length

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue ``keys`` [h, k, dim] (h <= heads: the first h queues) in place of the oldest rows, wrapping round
        at ``length``; a shared queue first gathers every rank's keys ([h, k * world, dim], rank order). More keys
        than rows: the newest ``length`` of them are kept."""
        if self.shared:
            keys = gather(keys.detach().transpose(0, 1)).transpose(0, 1)
        n = self.length
        k = min(keys.shape[1], n)
        if k == 0:
            return
        keys, h, p = keys.detach()[:, keys.shape[1] - k:], keys.shape[0], self._ptr
        first = min(k, n - p)
        self.rows[:h, p:p + first] = keys[:, :first]
        self.rows[:h, :k - first] = keys[:, first:]
        self._ptr, self._fill = (p + k) % n, min(n, self._fill + k)
        self.ptr.fill_(self._ptr)
        self.fill.fill_(self._fill)

    def newest_first(self) -> torch.Tensor:
        """The filled rows, newest first: [heads, fill, dim] (a copy)."""
        order = (self._ptr - 1 - torch.arange(self._fill, device=self.rows.device)) % self.length
        return self.rows[:, order]

    def _fit(self, state_dict: dict, prefix: str, *args: object) -> None:
        """A saved queue of another length (a per-rank queue saved under another world size) keeps its newest rows
        that fit, re-laid oldest first from row 0."""
        saved = state_dict.get(prefix + "rows")
        if saved is None or saved.shape[1] == self.length or saved.shape[::2] != self.rows.shape[::2]:
            return
        length, ptr, fill = saved.shape[1], int(state_dict[prefix + "ptr"]), int(state_dict[prefix + "fill"])
        keep = min(fill, self.length)
        newest = saved[:, (ptr - 1 - torch.arange(keep, device=saved.device)) % length]
        fitted = torch.zeros(self.rows.shape, dtype=saved.dtype, device=saved.device)
        fitted[:, :keep] = newest.flip(1)
        state_dict[prefix + "rows"] = fitted
        state_dict[prefix + "ptr"] = torch.tensor(keep % self.length)
        state_dict[prefix + "fill"] = torch.tensor(keep)


def _read_counts(module: Queue, keys: object) -> None:
    """After loading: pointer and fill count back into the Python ints the loop reads (one sync, at load)."""
    module._ptr, module._fill = int(module.ptr), int(module.fill)
