import pytest

from aiserving import backends


@pytest.fixture
def fake_frameworks(tmp_path, monkeypatch):
    (tmp_path / "goodfw.py").write_text("VALUE = 1\n")
    (tmp_path / "brokenfw.py").write_text("raise ImportError('libbroken.so.1: cannot open')\n")
    (tmp_path / "good_backend.py").write_text("import goodfw\n")
    (tmp_path / "broken_backend.py").write_text("import brokenfw\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(backends, "REGISTRY", {
        "good": ("good_backend", "C", ("goodfw",)),
        "broken": ("broken_backend", "C", ("brokenfw",)),
        "absent": ("absent_backend", "C", ("no_such_framework_here",)),
        "either": ("good_backend", "C", ("no_such_framework_here", "goodfw"))})
    monkeypatch.setattr(backends, "_probed", {})


def test_only_frameworks_that_import_are_supported(fake_frameworks, caplog):
    assert backends.supported_types() == ["either", "good"]
    assert "broken_backend does not import" in caplog.text
    assert "libbroken.so.1" in caplog.text


def test_the_probe_runs_once(fake_frameworks, monkeypatch):
    assert backends.supported_types() == ["either", "good"]
    monkeypatch.setattr(backends, "_start_probe", lambda name: pytest.fail("probed twice"))
    assert backends.supported_types() == ["either", "good"]
