"""Sealed bundles (the node's authenticated format): round trip, one flipped byte in
every region refused with a clear error, another device's key refused, code imported
from memory only, and the `aiserving device-key` / `bundle encrypt` commands."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aiserving.bundle import sealed
from aiserving.bundle.store import BundleStore
from aiserving.bundle.vendor import VendorCode
from aiserving.errors import ModelKeyError
from tests.support.bundles import write_bundle

ROOT = Path(__file__).resolve().parents[2]
PLAIN = b"plain model bytes " * 300
MARKER = "vendor secret 7f3a9c"
PRE_WITH_HELPER = textwrap.dedent(f'''\
    import sealhelper

    def pre_dataprocess(infer_data):
        return {{"feed_list": [], "passby": sealhelper.WHO + " {MARKER}"}}
''')


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("AISRV_SETTINGS", None)
    return subprocess.run([sys.executable, "-m", "aiserving", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    device, other = folder / "device.pem", folder / "other.pem"
    sealed.make_device_key(device)
    sealed.make_device_key(other)
    return device, other


def _device(path: Path) -> sealed.DeviceKey:
    return sealed.DeviceKey.load(str(path))


def test_a_sealed_file_opens_to_the_plain_bytes(keys):
    device = _device(keys[0])
    blob = sealed.seal(PLAIN, sealed.read_public_key(sealed.public_path(keys[0])), "model_core")
    assert sealed.is_sealed(blob) and PLAIN[:64] not in blob
    assert device.open(blob, "model_core") == PLAIN
    # Sealing twice gives different bytes (fresh content key and nonce every time).
    assert blob != sealed.seal(PLAIN, device.private.public_key(), "model_core")


def _regions(blob: bytes) -> dict[str, int]:
    """An offset inside each region of a sealed file."""
    (size,) = struct.unpack(">H", blob[41:43])
    return {"magic": 2, "version": 8, "fingerprint": 20, "wrapped key length": 42,
            "wrapped key": 43 + size // 2, "nonce": 43 + size + 5,
            "ciphertext": 55 + size + 10, "tag": len(blob) - 3}


_WORDS = {"magic": "does not start with a sealed header", "version": "format version",
          "fingerprint": "is sealed for device key", "wrapped key length": "wrapped key",
          "wrapped key": "wrapped key cannot be unwrapped", "nonce": "fails authentication",
          "ciphertext": "fails authentication", "tag": "fails authentication"}


@pytest.mark.parametrize("region", list(_WORDS))
def test_one_flipped_byte_in_any_region_is_refused(keys, region):
    device = _device(keys[0])
    blob = bytearray(sealed.seal(PLAIN, device.private.public_key(), "model_core"))
    blob[_regions(bytes(blob))[region]] ^= 0x01
    with pytest.raises(ModelKeyError, match=_WORDS[region]) as err:
        device.open(bytes(blob), "model_core")
    assert "model_core" in err.value.message


def test_a_truncated_file_and_a_moved_file_are_refused(keys):
    device = _device(keys[0])
    blob = sealed.seal(PLAIN, device.private.public_key(), "model_core")
    with pytest.raises(ModelKeyError, match="fails authentication"):
        device.open(blob[:-40], "model_core")
    with pytest.raises(ModelKeyError, match="truncated"):
        device.open(blob[:30], "model_core")
    # The name is authenticated: a sealed file put in another file's place does not open.
    with pytest.raises(ModelKeyError, match="fails authentication"):
        device.open(blob, "pre_dataprocess.py")


def test_another_devices_key_is_named_in_the_error(keys):
    device, other = _device(keys[0]), _device(keys[1])
    blob = sealed.seal(PLAIN, other.private.public_key(), "model_core")
    with pytest.raises(ModelKeyError) as err:
        device.open(blob, "model_core")
    assert sealed.show(other.digest) in err.value.message
    assert sealed.show(device.digest) in err.value.message


def _sealed_bundle(storage: Path, keys, **kwargs):
    plain = write_bundle(storage / "plain", pre=PRE_WITH_HELPER,
                         extra={"sealhelper.py": "WHO = 'sealed helper'\n"}, **kwargs)
    target = storage / "models" / plain.record.implhash / plain.record.version
    target.parent.mkdir(parents=True, exist_ok=True)
    public = sealed.read_public_key(sealed.public_path(keys[0]))
    names = sealed.seal_bundle(plain.path, target, public)
    return plain, BundleStore(storage).load(plain.record.implhash, plain.record.version), names


def test_sealed_code_runs_from_memory_and_leaves_no_bytecode(tmp_path, keys):
    plain, bundle, names = _sealed_bundle(tmp_path, keys, name="code", seed=5)
    assert {"pre_dataprocess.py", "post_dataprocess.py", "sealhelper.py"} <= set(names)
    for name in names:
        assert MARKER.encode() not in (bundle.path / name).read_bytes()
    # Without the key, or with another device's, the code does not run.
    with pytest.raises(ModelKeyError, match="no device key"):
        VendorCode.load(bundle)
    with pytest.raises(ModelKeyError, match="not for this node's key"):
        VendorCode.load(bundle.with_device_key(str(keys[1])))
    vendor = VendorCode.load(bundle.with_device_key(str(keys[0])))
    assert vendor.pre({"path": "x"})["passby"] == f"sealed helper {MARKER}"
    assert "sealhelper" not in sys.modules
    assert not list(bundle.path.rglob("*.pyc"))


def test_a_flipped_byte_in_a_sealed_script_fails_the_load(tmp_path, keys):
    _, bundle, _ = _sealed_bundle(tmp_path, keys, name="tampered", seed=6)
    script = bundle.path / "post_dataprocess.py"
    data = bytearray(script.read_bytes())
    data[-20] ^= 0x20  # in the ciphertext
    script.write_bytes(bytes(data))
    with pytest.raises(ModelKeyError, match="post_dataprocess.py fails authentication"):
        VendorCode.load(bundle.with_device_key(str(keys[0])))


def test_a_listed_file_replaced_by_plaintext_is_refused(tmp_path, keys):
    plain, bundle, _ = _sealed_bundle(tmp_path, keys, name="swapped", seed=7)
    shutil.copy(plain.path / "pre_dataprocess.py", bundle.path / "pre_dataprocess.py")
    with pytest.raises(ModelKeyError, match="listed in sealed.json as sealed"):
        VendorCode.load(bundle.with_device_key(str(keys[0])))


def test_the_device_key_command_makes_a_private_key_only_its_owner_reads(tmp_path):
    made = _cli("device-key", "--out", str(tmp_path / "keys" / "device.pem"))
    assert made.returncode == 0, made.stderr
    private = tmp_path / "keys" / "device.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    digest = sealed.show(sealed.DeviceKey.load(str(private)).digest)
    assert f"fingerprint {digest}" in made.stdout
    assert sealed.public_path(private).is_file()
    # Asked again, it shows the same key rather than replacing it.
    again = _cli("device-key", "--out", str(private))
    assert again.returncode == 0 and digest in again.stdout and "exists" in again.stdout
    assert sealed.DeviceKey.load(str(private)).digest == \
        sealed.fingerprint(sealed.read_public_key(sealed.public_path(private)))


def test_the_device_key_defaults_to_the_storage_keys_folder(tmp_path):
    settings = tmp_path / "settings.py"
    settings.write_text("settings = {'storage': 'store'}\n")
    made = _cli("device-key", "--settings", str(settings))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "store" / "keys" / "device-key.pem").is_file()


def test_the_bundle_encrypt_command_seals_code_and_model(tmp_path, keys):
    plain = write_bundle(tmp_path / "plain", name="cli", seed=8, mode="structureEmbed")
    out = tmp_path / "sealed-copy"
    made = _cli("bundle", "encrypt", str(plain.path), "--device-key",
                str(sealed.public_path(keys[0])), "--out", str(out))
    assert made.returncode == 0, made.stderr
    manifest = json.loads((out / "sealed.json").read_text())
    assert set(manifest["files"]) >= {"model_core", "pre_dataprocess.py", "post_dataprocess.py"}
    assert manifest["device_key"] == sealed.show(_device(keys[0]).digest)
    core = (plain.path / "model_core").read_bytes()
    assert core[len(core) // 2:len(core) // 2 + 32] not in (out / "model_core").read_bytes()
    assert (out / "distros.json").read_bytes() == (plain.path / "distros.json").read_bytes()
    # The sealed copy checks out on a device holding the key, and only there.
    settings = tmp_path / "settings.py"
    settings.write_text(f"settings = {{'crypto.device_key': {str(keys[0])!r}}}\n")
    store = tmp_path / "store" / "models" / plain.record.implhash / plain.record.version
    shutil.copytree(out, store)
    checked = _cli("bundle", "check", str(store), "--settings", str(settings))
    assert checked.returncode == 0, checked.stderr
    settings.write_text(f"settings = {{'crypto.device_key': {str(keys[1])!r}}}\n")
    refused = _cli("bundle", "check", str(store), "--settings", str(settings))
    assert refused.returncode == 1 and "not for this node's key" in refused.stderr
    # Refusals: an existing target, a key file that is not a key.
    again = _cli("bundle", "encrypt", str(plain.path), "--device-key",
                 str(sealed.public_path(keys[0])), "--out", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = _cli("bundle", "encrypt", str(plain.path), "--device-key", str(plain.path / "distros.json"),
               "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and "not a PEM RSA key" in bad.stderr
