import pytest

from aiserving import backends


@pytest.fixture
def fake_frameworks(tmp_path, monkeypatch):
    (tmp_path / "goodfw.py").write_text("VALUE = 1\n")
    (tmp_path / "brokenfw.py").write_text("raise ImportError('libbroken.so.1: cannot open')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(backends, "REGISTRY", {
        "good": ("m", "C", "goodfw"), "broken": ("m", "C", "brokenfw"),
        "absent": ("m", "C", "no_such_framework_here")})
    monkeypatch.setattr(backends, "_probed", {})


def test_only_frameworks_that_import_are_supported(fake_frameworks, caplog):
    assert backends.supported_types() == ["good"]
    assert "brokenfw is installed but does not import" in caplog.text
    assert "libbroken.so.1" in caplog.text


def test_the_probe_runs_once(fake_frameworks, monkeypatch):
    assert backends.supported_types() == ["good"]
    monkeypatch.setattr(backends, "_imports", lambda name: pytest.fail("probed twice"))
    assert backends.supported_types() == ["good"]
