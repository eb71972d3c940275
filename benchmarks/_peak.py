"""What the benchmark scripts share: the time of one call (CUDA synchronised) and the peak memory of a
variant, measured in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import torch


def timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, with CUDA's queued work finished before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_bytes(device: torch.device) -> int:
    """This process's peak memory: CUDA's allocator peak, or VmHWM on the CPU (ru_maxrss would
    include the parent's at fork)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    status = open("/proc/self/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def peak_memory(script: str, variant: str, device: torch.device) -> int:
    """Run ``script --memory-child VARIANT`` in a fresh process and read the peak it prints."""
    out = subprocess.run([sys.executable, script, "--memory-child", variant, "--device", str(device)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]
