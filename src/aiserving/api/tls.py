"""TLS of the node's doors: one certificate and key for gRPC and the REST front.

Read and checked once at start, before anything listens, so a missing, unreadable
or malformed file stops the node with one sentence naming the setting instead
of a gunicorn worker that fails to boot or a gRPC port that silently stays shut.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from aiserving.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    cert_path: str
    key_path: str
    cert: bytes
    key: bytes
    client_ca: bytes | None  # gRPC clients must present a certificate from these CAs


def load_tls(settings) -> TlsFiles | None:
    """The configured certificate, key and client CA, checked; None when TLS is off."""
    cert_path, key_path = settings["tls.cert"], settings["tls.key"]
    ca_path = settings["tls.client_ca"]
    if not (cert_path or key_path or ca_path):
        return None
    if not (cert_path and key_path):
        missing = "tls.key" if cert_path else "tls.cert"
        raise ConfigError(f"Setting '{missing}' is empty, but TLS needs both 'tls.cert' and "
                          "'tls.key' (and 'tls.client_ca' needs them too): set both, or neither.")
    cert = _read_certificates("tls.cert", cert_path)
    key = _read("tls.key", key_path)
    try:
        serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise ConfigError(f"Setting 'tls.key' is {key_path!r}, a passphrase-protected key: the "
                          "node needs it unencrypted (keep the file mode 0600).") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"Setting 'tls.key' is {key_path!r}, which holds no usable PEM "
                          f"private key ({type(exc).__name__}).") from None
    try:  # what gunicorn and gRPC will do: also catches a key that is not the cert's
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise ConfigError(f"Settings 'tls.cert' and 'tls.key' ({cert_path!r}, {key_path!r}) "
                          f"do not make a usable pair: {exc.reason or exc}.") from None
    client_ca = _read_certificates("tls.client_ca", ca_path) if ca_path else None
    return TlsFiles(cert_path, key_path, cert, key, client_ca)


def _read_certificates(key: str, path: str) -> bytes:
    data = _read(key, path)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"Setting '{key}' is {path!r}, which holds no PEM certificate "
                          "('-----BEGIN CERTIFICATE-----').") from None
    return data


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"Setting '{key}' is {path!r}, which cannot be read "
                          f"({exc.strerror}).") from None
