"""The device a benchmark runs on: its name, slug and cache size, and which fastvae backend its
tensors get."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Optional

import torch

__all__ = ["cache_bytes", "cpu_name", "device_info", "fastvae_backend"]


def cache_bytes(device) -> Optional[int]:
    """The L2 size of a CUDA device, or the last-level cache of the CPU (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    best = None
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in root.glob("index*"):
            text = (index / "size").read_text().strip()
            m = re.fullmatch(r"(\d+)([KMG]?)", text)
            if m:
                size = int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]
                best = max(best or 0, size)
    except OSError:
        return None
    return best


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device) -> dict:
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        info = {"type": "cuda", "name": name, "slug": f"cuda-{_slug(name)}",
                "memory_bytes": int(props.total_memory), "sm_count": props.multi_processor_count,
                "capability": f"{props.major}.{props.minor}", "cache_bytes": cache_bytes(device)}
    else:
        name = cpu_name()
        info = {"type": device.type, "name": name, "slug": f"{device.type}-{_slug(name)}",
                "threads": torch.get_num_threads(), "cache_bytes": cache_bytes(device)}
    return info


def fastvae_backend(device) -> str:
    """What FASTVAE_BACKEND resolves to for tensors on ``device`` (as documented in the spec)."""
    setting = os.environ.get("FASTVAE_BACKEND", "auto").strip().lower() or "auto"
    if setting != "auto":
        return setting
    return "triton" if torch.device(device).type == "cuda" else "torch"
