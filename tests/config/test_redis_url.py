"""The redis URL forms the node understands (aiserving.config.redis_url)."""

import pytest

from aiserving.config import redis_url as rt
from aiserving.config import Settings
from aiserving.errors import ConfigError


def test_a_sentinel_url_names_its_sentinels_service_db_and_credentials():
    t = rt.parse("redis+sentinel://edge:p%40ss@10.0.0.5:26379,[::1]:26380/cache/4"
                 "?sentinel_password=sp&socket_timeout=2")
    assert t.sentinels == [("10.0.0.5", 26379), ("::1", 26380)]
    assert (t.service, t.db) == ("cache", 4)
    assert t.options == {"username": "edge", "password": "p@ss", "socket_timeout": 2.0}
    assert t.sentinel_options == {"password": "sp"}
    tls = rt.parse("rediss+sentinel://s:1/cache?ssl_ca_certs=/ca.pem")
    assert tls.options["ssl"] and tls.sentinel_options["ssl_ca_certs"] == "/ca.pem"


@pytest.mark.parametrize("url, db", [("redis://h:1", 0), ("redis://u:p@h:1/7", 7),
                                     ("rediss://h:1/2?ssl_ca_certs=/c", 2),
                                     ("unix:///run/r.sock?db=3", 3)])
def test_the_db_number_of_each_form(url, db):
    assert rt.home_db(url) == db


@pytest.mark.parametrize("url", ["http://h:1", "redis+sentinel://h:1", "redis+sentinel://h/s",
                                 "redis://h:1/?colour=red", "redis://", "redis://h:1/99999"])
def test_a_bad_url_is_one_sentence_naming_the_setting(url):
    with pytest.raises(ConfigError) as err:
        Settings.load(environ={"AISRV_REDIS_URL": url})
    assert "AISRV_REDIS_URL" in err.value.message


def test_passwords_stay_out_of_error_messages():
    with pytest.raises(ConfigError) as err:
        Settings.load(environ={"AISRV_REDIS_URL": "redis://u:hunter2@h:1/?pw=1&password=x"})
    assert "hunter2" not in err.value.message and "password=x" not in err.value.message
    assert rt.redact("redis+sentinel://:a@h:1/s?sentinel_password=b") == \
        "redis+sentinel://:***@h:1/s?sentinel_password=***"


def test_settings_make_one_url_the_url_wins(tmp_path):
    s = Settings.load(environ={"AISRV_REDIS_SENTINELS": "10.0.0.5:26379, 10.0.0.6:26379",
                               "AISRV_REDIS_SENTINEL_SERVICE": "cache",
                               "AISRV_REDIS_PASSWORD": "p&q"})
    assert rt.parse(s.redis_url).sentinels == [("10.0.0.5", 26379), ("10.0.0.6", 26379)]
    assert rt.parse(s.redis_url).options["password"] == "p&q"
    f = tmp_path / "settings.py"
    f.write_text('settings = {"redis.url": "rediss://h:6380/2", "redis.host": "ignored", '
                 '"redis.tls_ca": "ca.pem"}\n')
    options = rt.parse(Settings.load(f, environ={}).redis_url).options
    assert options["host"] == "h" and options["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match="AISRV_REDIS_SENTINELS"):
        Settings.load(environ={"AISRV_REDIS_SENTINELS": "10.0.0.5"})
    with pytest.raises(ConfigError, match="AISRV_REDIS_KEY_PREFIX"):
        Settings.load(environ={"AISRV_REDIS_KEY_PREFIX": "a b"})
