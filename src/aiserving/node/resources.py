"""Node resource figures for `Connectivity.ListNodeResources` (cpu, mem, gpu, dsk as strings)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil

NA = "N/A"

# psutil.cpu_percent(interval=None) compares against the previous call and answers a
# meaningless 0.0 the first time; the first call in the process samples briefly instead,
# later calls measure the time since the previous call (no blocking).
_CPU_PRIME_INTERVAL = 0.1
_cpu_primed = False

# Jetson exposes GPU load in per-mille; the path moved between L4T releases.
_JETSON_LOAD_FILES = ("sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load")
_RKNPU_LOAD_FILE = "sys/kernel/debug/rknpu/load"
_RKNPU_CORE = re.compile(r"Core\d+:\s*(\d+(?:\.\d+)?)\s*%")
_RKNPU_SINGLE = re.compile(r"NPU load:\s*(\d+(?:\.\d+)?)\s*%")


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def cpu_percent() -> str:
    global _cpu_primed
    if _cpu_primed:
        return _fmt(psutil.cpu_percent(interval=None))
    _cpu_primed = True
    return _fmt(psutil.cpu_percent(interval=_CPU_PRIME_INTERVAL))


def disk_percent(storage: str | Path) -> str:
    # The storage folder may not exist before the first bundle lands: measure the volume
    # it will be created on.
    path = os.path.abspath(os.fspath(storage))
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        return _fmt(psutil.disk_usage(path).percent)
    except OSError:
        return NA


def _nvml_used_percent() -> float | None:
    """Memory used over all NVIDIA devices; None when NVML is absent or sees no GPU."""
    try:
        import pynvml  # optional (nvidia-ml-py): desktop/server hosts only
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError (no driver, no device) or a broken binding
        return None
    try:
        used = total = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            used += info.used
            total += info.total
        return used / total * 100 if total > 0 else None
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _jetson_load_percent(root: Path) -> float | None:
    # Unified memory on Jetson makes "GPU memory used" the same as system memory;
    # the GPU load says more.
    for rel in _JETSON_LOAD_FILES:
        try:
            permille = int((root / rel).read_text().strip())
        except (OSError, ValueError):
            continue
        if 0 <= permille <= 1000:
            return permille / 10
    return None


def _rknpu_load_percent(root: Path) -> float | None:
    try:
        text = (root / _RKNPU_LOAD_FILE).read_text()
    except (OSError, ValueError):  # debugfs is often root-only
        return None
    cores = [float(v) for v in _RKNPU_CORE.findall(text)]
    if cores:
        return sum(cores) / len(cores)
    single = _RKNPU_SINGLE.search(text)  # older kernels: one figure for the whole NPU
    return float(single.group(1)) if single else None


def gpu_usage(sysfs_root: str | Path = "/") -> str:
    """First provider that applies: NVML, Jetson sysfs, Rockchip NPU debugfs; else "N/A"."""
    root = Path(sysfs_root)
    # Tried in order and lazily: a later provider is not read once an earlier one answers.
    value = _nvml_used_percent()
    if value is None:
        value = _jetson_load_percent(root)
    if value is None:
        value = _rknpu_load_percent(root)
    return NA if value is None else _fmt(value)


def node_resources(storage: str | Path, sysfs_root: str | Path = "/") -> dict[str, str]:
    return {
        "cpu": cpu_percent(),
        "mem": _fmt(psutil.virtual_memory().percent),
        "gpu": gpu_usage(sysfs_root),
        "dsk": disk_percent(storage),
    }
