"""TLS at both doors: with `tls.cert` and `tls.key` the REST front speaks only HTTPS and
gRPC only TLS (with `tls.client_ca`, only to clients holding a certificate of that CA);
plain-text clients are refused; a bad file stops the start with one clear line."""

import base64
import datetime
import ipaddress
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aiserving.api.grpc.protocol import connectivity_pb2_grpc
from tests.support.bundles import reference, write_bundle, write_image
from tests.support.grpc_client import Client, common_pb2, inference_pb2
from tests.support.node import RUN_PY, NodeProcess


def make_cert(folder, name, *, issuer=None, ca=False):
    """A P-256 key and certificate for 127.0.0.1/localhost, self-signed or signed by
    `issuer` (its (cert, key)); written as <name>.pem and <name>.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert, key, cert_path, key_path


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    _, _, cert, key = make_cert(root, "node")
    bundle = write_bundle(root / "storage", name="tiny", seed=3)
    node = NodeProcess(root / "storage", env={"AISRV_TLS_CERT": str(cert),
                                              "AISRV_TLS_KEY": str(key),
                                              "AISRV_AUTOLOAD": "tiny",
                                              "AISRV_HTTP_READ_TIMEOUT_S": "2"}).start()
    node.bundle, node.cert = bundle, cert
    node.image = write_image(root / "a.png", seed=5)
    yield node
    node.stop()


def secure_client(node, cert_path, client=None):
    """A Client on a TLS channel that trusts `cert_path` (and presents `client`'s pair)."""
    chain = key = None
    if client:
        key, chain = client[1].read_bytes(), client[0].read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_path.read_bytes(),
                                               private_key=key, certificate_chain=chain)
    channel = grpc.secure_channel(f"localhost:{node.grpc_port}", credentials)
    return Client(node, channel)


def test_rest_serves_https_only(node):
    assert requests.get(node.base + "/healthz", verify=node.cert, timeout=10).status_code == 200
    assert node.base.startswith("https://")
    answer = None
    for _ in range(600):  # until the autoloaded model runs
        answer = node.detect(node.image)
        if answer.status_code != 503:
            break
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["result"]["scores"],
                               reference(node.bundle, node.image), rtol=1e-4, atol=1e-5)
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust it
        requests.get(node.base + "/healthz", timeout=10)
    with pytest.raises(requests.RequestException):  # plain text on the HTTPS port
        requests.get(f"http://127.0.0.1:{node.port}/healthz", timeout=10)
    assert "REST front listening on https://" in node.log()


def test_the_health_command_asks_the_https_door(node):
    """The images' HEALTHCHECK (`run.py health`) finds a TLS node where its settings say."""
    env = {k: v for k, v in node.env.items() if k != "AISRV_SETTINGS"}
    ask = [sys.executable, str(RUN_PY), "health"]
    done = subprocess.run(ask, env={**env, "AISRV_HTTP_PORT": str(node.port)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"healthy: https://127.0.0.1:{node.port}/healthz" in done.stdout
    plain = {k: v for k, v in env.items() if not k.startswith("AISRV_TLS_")}
    done = subprocess.run(ask, env={**plain, "AISRV_HTTP_PORT": str(node.port)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1  # plain HTTP to an HTTPS door is no answer
    assert f"unhealthy: http://127.0.0.1:{node.port}/healthz" in done.stderr


def test_a_client_that_never_says_hello_is_dropped(node):
    """The TLS handshake is bounded by http.read_timeout_s like any other read, so silent
    connections cannot hold the front's connection slots."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=60) as silent:
        assert silent.recv(1) == b""  # closed by the node (a hang would time out here)
    assert node.get("/healthz").status_code == 200


def test_grpc_speaks_tls_only(node):
    client = secure_client(node, node.cert)
    try:
        assert client.connectivity.Ping(common_pb2.PingRequest(client="tls")).version
        # autoload created the backend before the doors opened
        running = client.backend.ListRunningBackends(common_pb2.PingRequest(client="tls"))
        bid = running.backends[0].info.bid
        client.wait_running(bid)
        reply = client.inference.InferenceRemote(inference_pb2.InferRequest(
            bid=bid, uuid="tls-remote", type="png",
            base64=base64.b64encode(node.image.read_bytes()).decode()))
        assert reply.code == 0, reply.msg
        result = client.wait_result("tls-remote")
        np.testing.assert_allclose(result["scores"], reference(node.bundle, node.image),
                                   rtol=1e-4, atol=1e-5)
    finally:
        client.close()
    plain = grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}")
    with pytest.raises(grpc.RpcError) as err:  # a plain-text client
        connectivity_pb2_grpc.ConnectivityStub(plain).Ping(common_pb2.PingRequest(client="x"),
                                                           timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()
    assert "TLS, certificate" in node.log()


def test_grpc_mutual_tls_needs_a_client_certificate(tmp_path):
    ca_cert, ca_key, ca_path, _ = make_cert(tmp_path, "ca", ca=True)
    _, _, cert, key = make_cert(tmp_path, "server", issuer=(ca_cert, ca_key))
    client_pair = make_cert(tmp_path, "client", issuer=(ca_cert, ca_key))[2:]
    _, _, stranger_cert, stranger_key = make_cert(tmp_path, "stranger")
    node = NodeProcess(tmp_path / "storage", env={
        "AISRV_TLS_CERT": str(cert), "AISRV_TLS_KEY": str(key),
        "AISRV_TLS_CLIENT_CA": str(ca_path)})
    node.tls_cert = str(ca_path)  # the REST front's chain ends in this CA
    node.start()
    try:
        client = secure_client(node, ca_path, client_pair)
        assert client.connectivity.Ping(common_pb2.PingRequest(client="mtls")).version
        client.close()
        for pair in (None, (stranger_cert, stranger_key)):
            chain = key_bytes = None
            if pair:
                chain, key_bytes = pair[0].read_bytes(), pair[1].read_bytes()
            credentials = grpc.ssl_channel_credentials(
                ca_path.read_bytes(), private_key=key_bytes, certificate_chain=chain)
            channel = grpc.secure_channel(f"localhost:{node.grpc_port}", credentials)
            with pytest.raises(grpc.RpcError) as err:
                connectivity_pb2_grpc.ConnectivityStub(channel).Ping(
                    common_pb2.PingRequest(client="x"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()
        assert requests.get(node.base + "/healthz", verify=str(ca_path),
                            timeout=10).status_code == 200  # REST asks no client certificate
        assert "client certificates required" in node.log()
    finally:
        node.stop()


@pytest.mark.parametrize("case", ["missing", "not-pem", "wrong-key", "key-only"])
def test_a_bad_tls_file_stops_the_start_with_one_line(tmp_path, case):
    _, _, cert, key = make_cert(tmp_path, "node")
    _, _, _, other_key = make_cert(tmp_path, "other")
    env = {"missing": {"AISRV_TLS_CERT": str(tmp_path / "nope.pem"), "AISRV_TLS_KEY": str(key)},
           "not-pem": {"AISRV_TLS_CERT": str(key), "AISRV_TLS_KEY": str(key)},
           "wrong-key": {"AISRV_TLS_CERT": str(cert), "AISRV_TLS_KEY": str(other_key)},
           "key-only": {"AISRV_TLS_KEY": str(key)}}[case]
    node = NodeProcess(tmp_path / "storage", env=env)
    node.storage.mkdir(parents=True)
    done = subprocess.run([sys.executable, str(RUN_PY), "--port", str(node.port)], env=node.env,
                          capture_output=True, text=True, timeout=120, cwd=str(RUN_PY.parent))
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    expected = {"missing": "cannot be read", "not-pem": "no PEM certificate",
                "wrong-key": "do not make a usable pair", "key-only": "'tls.cert' is empty"}[case]
    assert expected in output
    assert "Traceback" not in output
    assert "embedded redis" not in output and "listening" not in output  # nothing started
