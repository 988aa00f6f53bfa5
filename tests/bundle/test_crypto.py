"""The legacy encrypted model format, decrypted in memory (contract, section 5)."""

import os

import pytest

from aiserving.bundle.crypto import decrypt_legacy, key_for, legacy_key, memory_file
from aiserving.errors import ModelKeyError
from tests.support import encryption


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return encryption.device_key(folder), encryption.device_key(folder, "other.pem")


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_003])
def test_a_vendors_file_decrypts_to_the_plain_bytes(keys, size):
    device, _ = keys
    plain = os.urandom(size)
    secret = b"the vendor's secret for this device"
    key = legacy_key(encryption.seal(device, secret), device.pvtkey)
    assert decrypt_legacy(encryption.encrypt(plain, secret), key) == plain


def test_key_for_only_when_encrypted(keys):
    device, _ = keys
    a64key = encryption.seal(device, b"s")
    assert key_for(0, a64key, device.pvtkey) is None and key_for("", "", "") is None
    assert key_for(1, a64key, device.pvtkey) == key_for("1", a64key, device.pvtkey)


def test_another_devices_key_gives_no_padding_oracle(keys):
    # OpenSSL's implicit rejection: RSA decryption with the wrong key yields a random
    # secret rather than an error, so the node cannot be used as a padding oracle.
    # The garbage it decrypts to is what fails, when the framework reads it.
    # (A sealed value larger than the other key's modulus is refused outright.)
    device, other = keys
    plain = os.urandom(4096)
    blob = encryption.encrypt(plain, b"secret")
    try:
        key = legacy_key(encryption.seal(device, b"secret"), other.pvtkey)
    except ModelKeyError as exc:
        assert "wrong a64key or pvtkey" in exc.message
    else:
        assert decrypt_legacy(blob, key) != plain


@pytest.mark.parametrize("case, words", [
    ("no pvtkey file", "cannot be read"),
    ("pvtkey not a key", "not a PEM RSA private key"),
    ("a64key not base64", "not valid base64"),
    ("a64key missing", "needs both"),
])
def test_a_wrong_key_is_a_clear_error(keys, tmp_path, case, words):
    device, _ = keys
    a64key, pvtkey = encryption.seal(device, b"secret"), device.pvtkey
    if case == "no pvtkey file":
        pvtkey = str(tmp_path / "nothing.pem")
    elif case == "pvtkey not a key":
        (tmp_path / "junk.pem").write_text("not a key")
        pvtkey = str(tmp_path / "junk.pem")
    elif case == "a64key not base64":
        a64key = "%%%"
    else:
        a64key = ""
    with pytest.raises(ModelKeyError, match=words) as err:
        legacy_key(a64key, pvtkey)
    assert err.value.code == 107


def test_a_pvtkey_that_is_no_key_file_is_neither_read_nor_waited_on(keys, tmp_path):
    # Found by the gRPC fuzz: /dev/zero was read until memory ran out, a FIFO blocked
    # the rpc's thread for ever, and a NUL byte escaped as an unexpected ValueError.
    device, _ = keys
    a64key = encryption.seal(device, b"secret")
    os.mkfifo(tmp_path / "fifo.pem")
    (tmp_path / "huge.pem").write_bytes(b"-" * (1024 * 1024))
    for pvtkey in ("/dev/zero", str(tmp_path / "fifo.pem"), str(tmp_path), "/tmp/a\x00b.pem",
                   str(tmp_path / "huge.pem")):
        with pytest.raises(ModelKeyError, match="cannot be read") as err:
            legacy_key(a64key, pvtkey)
        assert err.value.code == 107


@pytest.mark.parametrize("damage, words", [
    (lambda blob: blob[:-16], "truncated"),
    (lambda blob: blob[:20], "too short"),
    (lambda blob: b"not encrypted at all, just a plain model file", "16-digit plain size"),
])
def test_a_damaged_file_is_a_clear_error(keys, damage, words):
    device, _ = keys
    key = legacy_key(encryption.seal(device, b"k"), device.pvtkey)
    blob = encryption.encrypt(os.urandom(1000), b"k")
    with pytest.raises(ModelKeyError, match=words):
        decrypt_legacy(damage(blob), key)


def test_a_memory_file_is_on_no_disk():
    path = memory_file(b"plain model bytes", "model_core")
    assert path.startswith("/proc/self/fd/")
    with open(path, "rb") as fh:
        assert fh.read() == b"plain model bytes"
    assert os.readlink(path).startswith("/memfd:aisrv-model_core")
