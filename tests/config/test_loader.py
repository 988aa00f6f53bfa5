import pytest

from aiserving.config import SETTINGS, Settings, env_name, settings_table
from aiserving.errors import ConfigError
from tests.support.legacy import legacy_settings


def test_defaults_run_with_no_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.load(environ={})
    assert s["http.port"] == 8080
    assert s.redis_url is None  # embedded redis
    assert s.storage == tmp_path / "storage"
    assert s["be.trpy.device"] == "cpu"
    # Closed by default: every door on loopback.
    assert (s["http.host"], s["grpc.address"], s["redis.bind"]) == \
        ("127.0.0.1", "127.0.0.1:50051", "127.0.0.1")


def test_every_setting_has_an_environment_override():
    for setting in SETTINGS:
        assert env_name(setting.key).startswith("AISRV_")
        assert setting.doc
    assert env_name("redis.host") == "AISRV_REDIS_HOST"
    assert env_name("be.trpy.mixed_mode") == "AISRV_BE_TRPY_MIXED_MODE"


def test_file_then_environment(tmp_path):
    f = tmp_path / "settings.py"
    f.write_text('settings = {"http.port": 9000, "redis.host": "db.local", "redis.port": "6380",\n'
                 '            "be.trpy.mixed_mode": "1", "storage": "models-here"}\n')
    s = Settings.load(f, environ={"AISRV_REDIS_PORT": "7000", "AISRV_AUTOLOAD": "a, b"})
    assert s["http.port"] == 9000
    assert s["be.trpy.mixed_mode"] is True
    assert s.redis_url == "redis://db.local:7000"
    assert s["autoload"] == ["a", "b"]
    assert s.storage == tmp_path / "models-here"  # relative to the settings file


@pytest.mark.parametrize("name, value, key", [
    ("AISRV_HTTP_PORT", "eighty", "AISRV_HTTP_PORT"),
    ("AISRV_HTTP_PORT", "70000", "AISRV_HTTP_PORT"),
    ("AISRV_BE_TRPY_DEVICE", "gpu", "AISRV_BE_TRPY_DEVICE"),
    ("AISRV_BE_TFSRV_ADAPTER", "soap", "AISRV_BE_TFSRV_ADAPTER"),
    ("AISRV_BATCH_SIZE", "0", "AISRV_BATCH_SIZE"),
    ("AISRV_BACKEND_INFERPROCNUM", "3", "AISRV_BACKEND_INFERPROCNUM"),
    ("AISRV_PROFILE", "maybe", "AISRV_PROFILE"),
])
def test_a_bad_value_is_one_sentence_naming_the_setting(name, value, key):
    with pytest.raises(ConfigError) as err:
        Settings.load(environ={name: value})
    message = err.value.message
    assert key in message and value in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_unknown_key_in_file_is_refused(tmp_path):
    f = tmp_path / "settings.py"
    f.write_text('settings = {"redis.hots": "x"}\n')
    with pytest.raises(ConfigError, match="unknown setting 'redis.hots'"):
        Settings.load(f, environ={})


def test_broken_settings_file(tmp_path):
    f = tmp_path / "settings.py"
    f.write_text("settings = {\n")
    with pytest.raises(ConfigError, match="cannot be read: SyntaxError"):
        Settings.load(f, environ={})


def test_the_settings_page_carries_the_generated_table():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    assert settings_table() in page, ("docs/settings.md is stale: regenerate its table with "
                                      "`PYTHONPATH=src python -m aiserving settings-table`")


LEGACY_TEMPLATE = legacy_settings()  # the old product's template, as a device has it


def test_the_old_products_template_reads_as_it_did(tmp_path):
    f = tmp_path / "settings.py"
    f.write_text(LEGACY_TEMPLATE)
    s = Settings.load(f, environ={})
    assert s["grpc.address"] == "[::]:50051"  # `port` is the gRPC bind address
    assert s["http.port"] == 8080  # untouched by `port`
    assert str(s.storage) == "/home/jk-97/aiserving_storage"
    assert s["preheat"] == "/home/jk-97/aiserving_storage/preheat.jpeg"
    assert s.redis_url == "redis://localhost:6379"
    assert (s["be.tfsrv.grpc_port"], s["be.tfsrv.rest_port"]) == (8500, 8501)
    assert s["be.tfsrv.adapter"] == "restful"
    assert s["be.trpy.mixed_mode"] is True and s["be.trpy.device"] == "cuda"
    assert s["be.rknnpy.target"] == "rk3399pro"


@pytest.mark.parametrize("environ, expected", [
    ({"AISRV_PORT": "127.0.0.1:6000"}, "127.0.0.1:6000"),  # the legacy spelling
    ({"AISRV_PORT": "6000", "AISRV_GRPC_ADDRESS": "127.0.0.1:7000"}, "127.0.0.1:7000"),
    ({"AISRV_GRPC_ADDRESS": "7001"}, "[::]:7001"),  # a bare port
])
def test_grpc_address_from_the_environment(tmp_path, environ, expected):
    f = tmp_path / "settings.py"
    f.write_text(LEGACY_TEMPLATE)
    assert Settings.load(f, environ=environ)["grpc.address"] == expected


def test_a_bad_legacy_port_names_the_key(tmp_path):
    f = tmp_path / "settings.py"
    f.write_text("settings = {'port': '[::]:fifty'}\n")
    with pytest.raises(ConfigError, match="'port' in settings.py"):
        Settings.load(f, environ={})
