"""Peak memory of one call of a case (:func:`peak_memory`).

On CUDA, ``torch.cuda.max_memory_allocated`` during one call minus ``torch.cuda.memory_allocated``
just before it (so the inputs, and for ``bwd`` the forward's saved state, are left out; what the
call keeps alive, such as saved tensors in ``fwd``, is in).  On CPU the same difference is computed
from the allocation events of ``torch.profiler`` (``profile_memory=True``); if that is unavailable
the field is ``None``.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Optional

import torch

from .timing import sync

__all__ = ["PEAK_MEMORY_METHOD", "peak_memory"]


PEAK_MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during one call minus torch.cuda.memory_allocated before it",
    "cpu": "torch.profiler (profile_memory=True) allocation events of one call: peak of the running sum of "
           "allocations minus frees; null where the profiler gave none",
}


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block: some torch builds log a line from C++ on
    every profiler start and stop, which would bury the report."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(call: Callable, device) -> tuple[Optional[int], str]:
    """Peak bytes allocated during one ``call()`` above what was allocated just before it, and how
    it was measured (or why it could not be)."""
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = call()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak), PEAK_MEMORY_METHOD["cuda"]
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _native_stderr_silenced():  # the profiler's start/stop chatter, not the call's output
            prof.start()
        try:
            out = call()
            del out
        finally:
            with _native_stderr_silenced():
                prof.stop()
        events = []

        def walk(node):
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            for child in node.children:
                walk(child)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
        current = peak = 0
        for _, size in sorted(events):
            current += size
            peak = max(peak, current)
        return int(peak), PEAK_MEMORY_METHOD["cpu"]
    except Exception as err:  # private profiler API; report nothing rather than a guess
        return None, f"unavailable on CPU ({type(err).__name__}: {err})"
