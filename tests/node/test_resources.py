import re
import sys
import types

import psutil
import pytest

from aiserving.node import resources
from aiserving.node.resources import gpu_usage, node_resources

ONE_DECIMAL = re.compile(r"^\d{1,3}\.\d$")


@pytest.fixture(autouse=True)
def no_pynvml(monkeypatch):
    # Block any real pynvml so the sysfs providers are what is tested (None in sys.modules
    # makes `import pynvml` raise ImportError).
    monkeypatch.setitem(sys.modules, "pynvml", None)


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True)
    path.write_text(text)


def _fake_pynvml(devices, init_error=None):
    """A stand-in following pynvml's real function names; devices: [(used, total), ...]."""
    calls = []

    def nvmlInit():
        calls.append("init")
        if init_error:
            raise init_error

    def nvmlDeviceGetMemoryInfo(handle):
        used, total = devices[handle]
        return types.SimpleNamespace(used=used, total=total, free=total - used)

    module = types.ModuleType("pynvml")
    module.nvmlInit = nvmlInit
    module.nvmlDeviceGetCount = lambda: len(devices)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetMemoryInfo = nvmlDeviceGetMemoryInfo
    module.nvmlShutdown = lambda: calls.append("shutdown")
    module.calls = calls
    return module


def test_real_values_are_percentages_with_one_decimal(storage, tmp_path):
    reply = node_resources(storage, sysfs_root=tmp_path / "sysroot")
    assert set(reply) == {"cpu", "mem", "gpu", "dsk"}
    for key in ("cpu", "mem", "dsk"):
        assert ONE_DECIMAL.match(reply[key]), (key, reply[key])
        assert 0.0 <= float(reply[key]) <= 100.0
    assert reply["gpu"] == "N/A"
    # Later calls do not sample again.
    second = node_resources(storage, sysfs_root=tmp_path / "sysroot")
    assert ONE_DECIMAL.match(second["cpu"]) and 0.0 <= float(second["cpu"]) <= 100.0


def test_disk_percent_is_that_of_the_storage_volume(storage):
    assert node_resources(storage)["dsk"] == f"{psutil.disk_usage(str(storage)).percent:.1f}"


def test_missing_storage_measures_nearest_existing_parent(storage):
    missing = storage / "not" / "yet"
    assert node_resources(missing)["dsk"] == f"{psutil.disk_usage(str(storage)).percent:.1f}"


@pytest.mark.parametrize("rel", ["sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load"])
def test_jetson_load_is_per_mille(tmp_path, rel):
    _write(tmp_path, rel, "523\n")
    assert gpu_usage(tmp_path) == "52.3"
    assert node_resources(tmp_path, sysfs_root=tmp_path)["gpu"] == "52.3"


def test_rockchip_multi_core_is_averaged(tmp_path):
    _write(tmp_path, "sys/kernel/debug/rknpu/load", "NPU load:  Core0: 12%, Core1:  0%, Core2:  5%,\n")
    assert gpu_usage(tmp_path) == "5.7"


def test_rockchip_single_value(tmp_path):
    _write(tmp_path, "sys/kernel/debug/rknpu/load", "NPU load:  35%\n")
    assert gpu_usage(tmp_path) == "35.0"


def test_jetson_wins_over_rockchip(tmp_path):
    _write(tmp_path, "sys/devices/gpu.0/load", "100")
    _write(tmp_path, "sys/kernel/debug/rknpu/load", "NPU load:  35%\n")
    assert gpu_usage(tmp_path) == "10.0"


@pytest.mark.parametrize("jetson, rknpu", [
    ("busy", "NPU load: lots"),
    ("", ""),
    ("-5", "Core0: x%"),
])
def test_garbage_is_not_applicable(tmp_path, jetson, rknpu):
    _write(tmp_path, "sys/devices/gpu.0/load", jetson)
    _write(tmp_path, "sys/kernel/debug/rknpu/load", rknpu)
    assert gpu_usage(tmp_path) == "N/A"


def test_garbage_jetson_falls_through_to_rockchip(tmp_path):
    _write(tmp_path, "sys/devices/gpu.0/load", "busy")
    _write(tmp_path, "sys/kernel/debug/rknpu/load", "NPU load:  35%\n")
    assert gpu_usage(tmp_path) == "35.0"


def test_empty_root_without_pynvml_is_na(tmp_path):
    assert gpu_usage(tmp_path) == "N/A"
    assert gpu_usage(tmp_path / "does-not-exist") == "N/A"


def test_nvml_sums_memory_over_devices(tmp_path, monkeypatch):
    fake = _fake_pynvml([(1, 4), (3, 4)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    _write(tmp_path, "sys/devices/gpu.0/load", "523")  # NVML comes first
    assert gpu_usage(tmp_path) == "50.0"
    assert fake.calls == ["init", "shutdown"]


def test_nvml_without_devices_falls_through(tmp_path, monkeypatch):
    fake = _fake_pynvml([])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_usage(tmp_path) == "N/A"
    _write(tmp_path, "sys/devices/gpu.0/load", "523")
    assert gpu_usage(tmp_path) == "52.3"
    assert fake.calls == ["init", "shutdown", "init", "shutdown"]


def test_nvml_init_failure_falls_through(tmp_path, monkeypatch):
    class NVMLError(Exception):
        pass

    fake = _fake_pynvml([(1, 2)], init_error=NVMLError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    _write(tmp_path, "sys/devices/gpu.0/load", "523")
    assert gpu_usage(tmp_path) == "52.3"
    assert fake.calls == ["init"]  # no shutdown without a successful init


def test_nvml_error_while_reading_falls_through(tmp_path, monkeypatch):
    fake = _fake_pynvml([(1, 2)])

    def broken(handle):
        raise RuntimeError("GPU is lost")

    fake.nvmlDeviceGetMemoryInfo = broken
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_usage(tmp_path) == "N/A"
    assert fake.calls == ["init", "shutdown"]


def test_cpu_first_call_samples_then_does_not_block(monkeypatch):
    intervals = []

    def fake_cpu_percent(interval=None):
        intervals.append(interval)
        return 12.345

    monkeypatch.setattr(resources, "_cpu_primed", False)
    monkeypatch.setattr(resources.psutil, "cpu_percent", fake_cpu_percent)
    assert resources.cpu_percent() == "12.3"
    assert resources.cpu_percent() == "12.3"
    assert intervals[0] is not None and 0 < intervals[0] < 0.5
    assert intervals[1] is None
