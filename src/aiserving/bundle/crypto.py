"""Encrypted model files, legacy format (contract, section 5), decrypted in memory only.

A load request with `encrypted=1` carries `a64key` (base64 of a secret encrypted
with the device's RSA public key, PKCS#1 v1.5 as the old product's `rsa`
package made it) and `pvtkey` (the path of the device's PEM private key). The
AES key is SHA-256 of the decrypted secret. An encrypted `model_core` is 16
ASCII digits (the plain size, zero-padded), a 16-byte IV, then AES-256-CBC
ciphertext of the file padded with spaces to a multiple of 16.

The old product wrote the plaintext to disk while loading; here it exists only
in the memory of the inference process (and, for frameworks that insist on a
path, in an anonymous in-memory file: `os.memfd_create`).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from aiserving.errors import ModelKeyError

_HEADER = 16 + 16  # plain size digits, IV
_MAX_KEY_BYTES = 64 * 1024  # a PEM RSA key of 16384 bits is about 13 KiB


def key_for(encrypted, a64key: str, pvtkey: str) -> bytes | None:
    """The key a load request carries: None unless `encrypted` is 1 (or "1", true)."""
    if str(encrypted).strip().lower() not in ("1", "true"):
        return None
    return legacy_key(a64key, pvtkey)


def legacy_key(a64key: str, pvtkey: str) -> bytes:
    """The AES key of a legacy encrypted model: SHA-256(RSA-decrypt(base64(a64key)))."""
    if not a64key or not pvtkey:
        raise ModelKeyError("an encrypted model needs both 'a64key' and 'pvtkey'")
    try:
        sealed = base64.b64decode(a64key, validate=True)
    except (binascii.Error, ValueError):
        raise ModelKeyError("'a64key' is not valid base64") from None
    private = read_private_key(pvtkey, "the private key 'pvtkey'")
    try:
        # With a key that does not match, OpenSSL's implicit rejection gives a random
        # secret instead of an error (no padding oracle): the model then decrypts to
        # bytes no framework reads, and that load error says so.
        secret = private.decrypt(sealed, padding.PKCS1v15())
    except ValueError:
        raise ModelKeyError("'a64key' cannot be decrypted with the private key 'pvtkey': a "
                            "wrong a64key or pvtkey") from None
    return hashlib.sha256(secret).digest()


def read_private_key(path: str, what: str, hint: str = "") -> rsa.RSAPrivateKey:
    """The PEM RSA private key (no password) at `path`, or ModelKeyError naming `what`
    failed (`hint`: what to do about a key that cannot be read)."""
    try:
        pem = _read_key_file(path)
    except OSError as exc:
        raise ModelKeyError(f"{what} cannot be read: {exc.strerror or exc}{hint}") from None
    except ValueError:  # a NUL byte: no file has that name
        raise ModelKeyError(f"{what} cannot be read: not a file path") from None
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ModelKeyError(f"{what} is not a PEM RSA private key without a password: "
                            f"{exc}") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ModelKeyError(f"{what} is not an RSA private key")
    return private


def _read_key_file(path: str) -> bytes:
    """A key file the caller names: a FIFO or device (/dev/zero) there must neither block
    nor fill the node's memory, so only a small regular file is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = fh.read(_MAX_KEY_BYTES + 1)
    if len(data) > _MAX_KEY_BYTES:
        raise OSError(errno.EFBIG, f"larger than {_MAX_KEY_BYTES} bytes: not a key file")
    return data


def decrypt_legacy(blob: bytes, key: bytes, name: str = "model_core") -> bytes:
    """The plain bytes of one legacy encrypted file, in memory."""
    if len(blob) < _HEADER:
        raise ModelKeyError(f"{name} is too short to be an encrypted model ({len(blob)} bytes)")
    digits = blob[:16]
    if not digits.isdigit():
        raise ModelKeyError(f"{name} does not start with the 16-digit plain size of an "
                            "encrypted model: is it encrypted at all?")
    size = int(digits)
    body = blob[_HEADER:]
    if len(body) % 16 or len(body) < size or len(body) - size >= 16:
        raise ModelKeyError(f"{name} holds {len(body)} bytes of ciphertext for a plain size of "
                            f"{size}: the file is truncated or damaged")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[16:_HEADER])).decryptor()
    plain = decryptor.update(body) + decryptor.finalize()
    return plain[:size]


def encrypt_legacy(plain: bytes, key: bytes) -> bytes:
    """The legacy format of `plain` (what vendors' tools write; used by the tests)."""
    iv = os.urandom(16)
    padded = plain + b" " * (-len(plain) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return str(len(plain)).zfill(16).encode() + iv + encryptor.update(padded) + \
        encryptor.finalize()


def memory_file(data: bytes, name: str) -> str:
    """A path to `data` that never touches a disk: an anonymous in-memory file.

    The descriptor stays open for the life of the process (an inference process
    loads one model); the path is `/proc/self/fd/N`.
    """
    fd = os.memfd_create(f"aisrv-{name}", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return f"/proc/self/fd/{fd}"
