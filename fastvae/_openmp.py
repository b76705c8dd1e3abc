"""``OMP_WAIT_POLICY=PASSIVE`` for the ``fastvae`` commands on the CPU, set before torch loads.

PyTorch's OpenMP threads spin while they wait for work.  On a machine whose cores are shared with
other processes a spinning thread holds a core that the thread it waits for needs, which can make
a training step with several threads slower than with one; passive waiting avoids that.  The
OpenMP runtime reads the policy once, when it is loaded with torch, and has no call to change it
afterwards, so it must be in the environment before ``import torch``.  ``fastvae/__init__.py``
calls :func:`set_for_the_command` first thing: the package's import is the first code of ours
that runs for both ``fastvae ...`` and ``python -m fastvae ...``.

It matters to ``fastvae bench`` too: after a ``torch.compile``'d call (the ``compile`` provider, and
fastvae's own compiled CPU loops) the OpenMP threads keep spinning and slow down whatever is timed next
by 2-2.5x at small sizes on a 2-core machine (bench/NOTES.md, 2026-12-02).

Only the command does this, never a library import: the process must be the ``fastvae`` command
running one of :data:`COMMANDS` (not ``-h``), torch not yet imported, ``OMP_WAIT_POLICY`` not set, not under
torchrun (which sets ``OMP_NUM_THREADS=1`` anyway), and ``--device`` not naming CUDA.  With
``--device auto`` the policy is set too, before torch can say whether CUDA is there; on a CUDA
run the CPU threads have next to nothing to do, so waiting passively costs nothing there.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

__all__ = ["set_for_the_command", "COMMANDS"]

#: The subcommands that run torch work on the CPU.
COMMANDS = ("train", "sweep", "eval", "sample", "bench")

# Interpreter options that take a value as the next argument.
_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")


def _command_arguments() -> Optional[List[str]]:
    """The arguments after ``fastvae`` when this process is the ``fastvae`` command (the console
    script or ``python -m fastvae``), else None."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("fastvae", "fastvae.exe"):
        return list(sys.argv[1:])
    argv = list(getattr(sys, "orig_argv", []))[1:]
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[i + 2:] if argv[i + 1:i + 2] == ["fastvae"] else None
        if arg in _OPTIONS_WITH_VALUE:
            i += 2
        elif arg.startswith("-") and arg != "-":
            i += 1
        else:  # a script, '-' or the end of the options: not `-m fastvae`
            return None
    return None


def _device(args: List[str]) -> str:
    for i, arg in enumerate(args):
        if arg == "--device" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--device="):
            return arg.split("=", 1)[1]
    return "auto"


def set_for_the_command() -> None:
    """Put ``OMP_WAIT_POLICY=PASSIVE`` in the environment when the conditions of the module
    docstring hold; do nothing otherwise."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        return
    args = _command_arguments()
    if not args or args[0] not in COMMANDS or "-h" in args or "--help" in args:
        return
    if _device(args).startswith("cuda"):
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
