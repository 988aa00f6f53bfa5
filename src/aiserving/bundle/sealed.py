"""Sealed bundles: the node's own authenticated encryption format for vendor files.

The legacy format (contract, section 5; `aiserving.bundle.crypto`) encrypts only
`model_core`, without authentication, and needs the key in every load request.
A sealed bundle is made for one device key pair (`aiserving device-key`) by
`aiserving bundle encrypt`; the node opens it with its private key
(`crypto.device_key`), in memory only. Every sealed file stands alone:

    offset  size  field
    0       8     magic b"AISRVSLD"
    8       1     format version (1)
    9       32    SHA-256 of the device public key (DER SubjectPublicKeyInfo)
    41      2     length N of the wrapped key, big-endian
    43      N     the file's random AES-256 key, RSA-OAEP (MGF1 SHA-256, SHA-256) wrapped
    43+N    12    GCM nonce
    55+N    ...   AES-256-GCM ciphertext, then its 16-byte tag

The GCM associated data is the header (bytes 0 .. 55+N) and the file's name in
the bundle, so one changed byte anywhere -- header, wrapped key, nonce,
ciphertext, tag -- or a file moved to another name fails authentication.
`sealed.json` beside `distros.json` lists the sealed files, so a file whose
header was damaged beyond recognition is still known to be sealed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aiserving.bundle.crypto import read_private_key
from aiserving.errors import ModelKeyError

MAGIC = b"AISRVSLD"
VERSION = 1
MANIFEST = "sealed.json"
KEY_BITS = 3072
_FIXED = len(MAGIC) + 1 + 32 + 2  # up to the wrapped key
_NONCE = 12
_TAG = 16
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def fingerprint(public_key: rsa.RSAPublicKey) -> bytes:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def show(digest: bytes) -> str:
    """A fingerprint as people compare it: `SHA256:` and hex pairs."""
    return "SHA256:" + digest.hex(":")


def is_sealed(blob: bytes) -> bool:
    return blob[:len(MAGIC)] == MAGIC


def seal(plain: bytes, public_key: rsa.RSAPublicKey, name: str) -> bytes:
    """One file sealed for the holder of `public_key`'s private key."""
    content_key = AESGCM.generate_key(bit_length=256)
    wrapped = public_key.encrypt(content_key, _OAEP)
    nonce = os.urandom(_NONCE)
    header = MAGIC + bytes([VERSION]) + fingerprint(public_key) + \
        struct.pack(">H", len(wrapped)) + wrapped + nonce
    return header + AESGCM(content_key).encrypt(nonce, plain, _aad(header, name))


def _aad(header: bytes, name: str) -> bytes:
    return header + b"\0" + name.encode("utf-8")


@dataclass(frozen=True)
class DeviceKey:
    """This device's private key, read once per process."""

    path: str
    private: rsa.RSAPrivateKey
    digest: bytes

    @staticmethod
    def load(path: str) -> "DeviceKey":
        return _device_key(path)

    def open(self, blob: bytes, name: str) -> bytes:
        """The plain bytes of one sealed file, or ModelKeyError naming what failed."""
        if not is_sealed(blob):
            raise ModelKeyError(f"{name} is listed in {MANIFEST} as sealed but does not start "
                                "with a sealed header: the file is damaged or was replaced")
        if len(blob) < _FIXED:
            raise ModelKeyError(f"{name}: the sealed header is truncated")
        version = blob[len(MAGIC)]
        if version != VERSION:
            raise ModelKeyError(f"{name} is sealed in format version {version}; this node reads "
                                f"version {VERSION} (a damaged header, or a newer tool)")
        digest = blob[len(MAGIC) + 1:len(MAGIC) + 33]
        if digest != self.digest:
            raise ModelKeyError(f"{name} is sealed for device key {show(digest)}, not for this "
                                f"node's key {show(self.digest)} (crypto.device_key): a bundle made for "
                                "another device, or a damaged header")
        (size,) = struct.unpack(">H", blob[_FIXED - 2:_FIXED])
        header_end = _FIXED + size + _NONCE
        if len(blob) < header_end + _TAG:
            raise ModelKeyError(f"{name}: the sealed file is truncated")
        try:
            content_key = self.private.decrypt(blob[_FIXED:_FIXED + size], _OAEP)
        except ValueError:
            raise ModelKeyError(f"{name}: its wrapped key cannot be unwrapped with this node's "
                                "device key: the wrapped key was damaged") from None
        header = blob[:header_end]
        try:
            return AESGCM(content_key).decrypt(header[-_NONCE:], blob[header_end:],
                                               _aad(header, name))
        except (InvalidTag, ValueError):
            raise ModelKeyError(f"{name} fails authentication: it was changed or truncated after "
                                "it was sealed") from None


@functools.lru_cache(maxsize=4)
def _device_key(path: str) -> DeviceKey:
    private = read_private_key(path, f"this node's device key {path} (crypto.device_key)",
                               "; make one with `aiserving device-key`")
    return DeviceKey(path, private, fingerprint(private.public_key()))


def manifest(folder: Path) -> frozenset[str]:
    """The names `sealed.json` lists (empty for a bundle that is not sealed)."""
    path = folder / MANIFEST
    if not path.is_file():
        return frozenset()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelKeyError(f"{MANIFEST} is not a list of sealed files "
                            "({\"format\": ..., \"files\": [...]})") from None
    return frozenset(files)


# -- making keys and sealed bundles (the `aiserving` command) ------------------------------

def make_device_key(path: Path) -> bytes:
    """Write a new RSA key pair: `path` (private, mode 0600) and `path`.pub (public)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # Created 0600 from the start: never world-readable, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)
    public_path(path).write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return fingerprint(private.public_key())


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def read_public_key(path: Path) -> rsa.RSAPublicKey:
    """A public key from a PEM file holding the public key (or the private one)."""
    pem = path.read_bytes()
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        key = serialization.load_pem_private_key(pem, password=None).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    return key


#: what `bundle encrypt` seals: code, and the model files the backends read
_MODEL_FILES = ("model_core", "param.pth")
_MODEL_SUFFIXES = (".py", ".params", "-symbol.json")
_MODEL_FOLDERS = ("model_core", "variables", "assets")


def files_to_seal(folder: Path, also: list[str] = ()) -> list[str]:
    out = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, "distros.json"):
            continue
        if rel in _MODEL_FILES or rel.endswith(_MODEL_SUFFIXES) or rel in also \
                or rel.split("/")[0] in _MODEL_FOLDERS and "/" in rel:
            out.append(rel)
    return out


def seal_bundle(source: Path, target: Path, public_key: rsa.RSAPublicKey,
                also: list[str] = ()) -> list[str]:
    """Copy bundle folder `source` to `target` with its code and model files sealed."""
    names = files_to_seal(source, also)
    missing = [n for n in also if n not in names]
    if missing:
        raise FileNotFoundError(f"no file {missing[0]!r} in {source}")
    target.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if "__pycache__" in path.parts or rel == MANIFEST:
            continue
        out = target / rel
        if path.is_dir():
            out.mkdir(exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        out.write_bytes(seal(data, public_key, rel) if rel in names else data)
    (target / MANIFEST).write_text(json.dumps(
        {"format": "aisrv-sealed", "version": VERSION,
         "device_key": show(fingerprint(public_key)), "files": names}, indent=2) + "\n",
        encoding="utf-8")
    return names
