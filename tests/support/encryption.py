"""What a vendor does to ship a legacy encrypted model (contract, section 5).

Written from the contract with `cryptography` directly, independently of the
node's own `aiserving.bundle.crypto`: the device's RSA key pair (PKCS#1 PEM, as the old
product's `rsa` package saved it), a secret sealed for the device with PKCS#1
v1.5 (`a64key`), and `model_core` as 16 digits of plain size, a 16-byte IV and
AES-256-CBC (key = SHA-256 of the secret) over the file padded with spaces.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


@dataclass
class DeviceKey:
    pvtkey: str  # path of the private key on the device
    public: rsa.RSAPublicKey


def device_key(folder: Path, name: str = "private.pem") -> DeviceKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = Path(folder) / name
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return DeviceKey(str(path), private.public_key())


def seal(key: DeviceKey, secret: bytes) -> str:
    """a64key: base64 of the secret encrypted for the device."""
    return base64.b64encode(key.public.encrypt(secret, padding.PKCS1v15())).decode()


def encrypt(plain: bytes, secret: bytes) -> bytes:
    aes = hashlib.sha256(secret).digest()
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(aes), modes.CBC(iv)).encryptor()
    padded = plain + b" " * (-len(plain) % 16)
    return b"%016d" % len(plain) + iv + encryptor.update(padded) + encryptor.finalize()


def assert_no_plaintext_on_disk(node, storage: Path, plain_files: list[Path]) -> None:
    """No file under the storage folder, the temp folder's node files, or open in a
    worker (other than anonymous memory files) holds bytes of the plain files."""
    markers = []
    for plain in plain_files:
        data = Path(plain).read_bytes()
        markers += [data[n:n + 24] for n in (len(data) // 3, len(data) // 2, 2 * len(data) // 3)]
    places = [p for p in storage.rglob("*") if p.is_file() and not p.is_symlink()]
    tmp = Path(tempfile.gettempdir())
    for folder in tmp.glob("aisrv-*"):
        places += [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    for pid in node.worker_pids():
        for opened in psutil.Process(pid).open_files():
            if os.path.isfile(opened.path) and not opened.path.startswith("/memfd:"):
                places.append(Path(opened.path))
    for place in places:
        content = place.read_bytes()
        for marker in markers:
            assert marker not in content, f"plaintext bytes of a protected file found in {place}"
