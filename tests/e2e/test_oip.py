"""Open Inference Protocol (KServe v2) on a running node, through tritonclient over REST and gRPC.

One node serves a TorchScript bundle (tensors named INPUT__0 / OUTPUT__0, as
Triton's pytorch backend names them) and an ONNX bundle (the session's names).
Raw tensor requests must equal the framework's own output; image requests
(one BYTES input) must equal the legacy `/detect` result; mistakes come back
as protocol errors naming the problem.
"""

from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support import onnx_models
from tests.support.bundles import tiny_model, write_bundle, write_image
from tests.support.node import NodeProcess

TORCH, ONNX = "oip-torch", "oip-onnx"
TORCH_SEED = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("oip")
    storage = root / "storage"
    write_bundle(storage, name=TORCH, mode="structureEmbed", seed=TORCH_SEED)
    onnx_bundle = onnx_models.write_bundle(storage, "dynamic", seed=21, name=ONNX)
    node = NodeProcess(storage).start()
    bids = {}
    for name, btype in ((TORCH, "pytorch"), (ONNX, "onnx")):
        bids[name] = node.switch(btype=btype, model=name)
        node.wait_switch(bids[name])
    http = httpclient.InferenceServerClient(f"127.0.0.1:{node.port}")
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.oip_grpc_port}")
    yield {"node": node, "root": root, "bids": bids, "http": http, "grpc": grpc_client,
           "onnx_core": (onnx_bundle.path / "model_core").read_bytes(),
           "image": write_image(root / "photo.png", seed=5)}
    http.close()
    grpc_client.close()
    node.stop()


def framework(world, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's own outputs for `x`, computed without the node."""
    if model == TORCH:
        with torch.no_grad():
            return {"OUTPUT__0": tiny_model(3, 3, TORCH_SEED)(torch.from_numpy(x)).numpy()}
    scores, features = onnx_models.raw_outputs(world["onnx_core"], x)
    return {"scores": scores, "features": features}


INPUT = {TORCH: "INPUT__0", ONNX: "image"}
OUTPUTS = {TORCH: ["OUTPUT__0"], ONNX: ["scores", "features"]}


# --- server and model metadata, readiness ----------------------------------------------------

def test_server_is_live_and_ready_and_says_what_it_is(world):
    for client in (world["http"], world["grpc"]):
        assert client.is_server_live() and client.is_server_ready()
    assert world["http"].get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = world["grpc"].get_server_metadata(as_json=True)
    assert meta["name"] == "aiserving" and meta["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("model, platform, inputs, outputs", [
    (TORCH, "pytorch_libtorch",
     [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 3, 16, 16]}],
     [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 3]}]),
    (ONNX, "onnxruntime_onnx", [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]}],
     [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
      {"name": "features", "datatype": "FP32", "shape": [-1, 4]}]),
])
def test_model_metadata_names_the_frameworks_tensors(world, model, platform, inputs, outputs):
    expected = {"name": model, "versions": ["1"], "platform": platform, "inputs": inputs,
                "outputs": outputs}
    assert world["http"].get_model_metadata(model) == expected
    assert world["http"].get_model_metadata(model, "1") == expected
    got = world["grpc"].get_model_metadata(model, as_json=True)
    for tensor in got["inputs"] + got["outputs"]:  # protobuf's JSON writes int64 as text
        tensor["shape"] = [int(d) for d in tensor["shape"]]
    assert got == expected
    for client in (world["http"], world["grpc"]):
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")


def test_unknown_models_and_versions_are_not_found(world):
    assert not world["http"].is_model_ready("no-such-model")
    assert not world["http"].is_model_ready(TORCH, "7")
    for call in (lambda c: c.get_model_metadata("no-such-model"),
                 lambda c: c.get_model_metadata(TORCH, "7")):
        with pytest.raises(InferenceServerException) as http_error:
            call(world["http"])
        assert http_error.value.status() == "404" and "is served by no live node" in http_error.value.message()
        with pytest.raises(InferenceServerException) as grpc_error:
            call(world["grpc"])
        assert grpc_error.value.status() == "StatusCode.NOT_FOUND"
        assert "is served by no live node" in grpc_error.value.message()
    with pytest.raises(InferenceServerException) as caught:
        world["grpc"].is_model_ready("no-such-model")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


# --- infer: raw tensors ------------------------------------------------------------------------

def _http_infer(world, model, x, binary_in, binary_out, client=None):
    tensor = httpclient.InferInput(INPUT[model], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in OUTPUTS[model]]
    return (client or world["http"]).infer(model, [tensor], outputs=outputs,
                                           request_id="req-1")


@pytest.mark.parametrize("model", [TORCH, ONNX])
@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False)])
def test_raw_tensors_over_rest_equal_the_framework(world, model, binary_in, binary_out):
    x = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    result = _http_infer(world, model, x, binary_in, binary_out)
    response = result.get_response()
    assert response["model_name"] == model and response["model_version"] == "1"
    assert response["id"] == "req-1"
    for output in response["outputs"]:
        assert ("parameters" in output) == binary_out and ("data" in output) != binary_out
    for name, expected in framework(world, model, x).items():
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-4, atol=1e-5)


def test_all_outputs_come_binary_when_none_are_named(world):
    x = np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = world["http"].infer(ONNX, [tensor])  # tritonclient asks binary_data_output
    assert [o["name"] for o in result.get_response()["outputs"]] == ["scores", "features"]
    np.testing.assert_allclose(result.as_numpy("features"),
                               framework(world, ONNX, x)["features"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", [TORCH, ONNX])
def test_raw_tensors_over_grpc_equal_the_framework(world, model):
    x = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    tensor = grpcclient.InferInput(INPUT[model], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = world["grpc"].infer(model, [tensor], request_id="g-1")
    response = result.get_response(as_json=True)
    assert response["model_name"] == model and response["id"] == "g-1"
    for name, expected in framework(world, model, x).items():
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-4, atol=1e-5)
    # One output asked for: only it comes back.
    only = world["grpc"].infer(model, [tensor],
                               outputs=[grpcclient.InferRequestedOutput(OUTPUTS[model][-1])])
    assert [o["name"] for o in only.get_response(as_json=True)["outputs"]] == OUTPUTS[model][-1:]


def test_typed_grpc_contents_are_taken_as_well_as_raw_ones(world):
    x = np.random.default_rng(4).random((1, 3, 16, 16), dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name=ONNX)
    tensor = request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(f"127.0.0.1:{world['node'].oip_grpc_port}") as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert [o.name for o in reply.outputs] == ["scores", "features"]
    scores = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(1, 3)
    np.testing.assert_allclose(scores, framework(world, ONNX, x)["scores"], rtol=1e-4, atol=1e-5)


def test_concurrent_raw_requests_each_get_their_own_answer(world):
    rng = np.random.default_rng(5)
    xs = [rng.random((1 + n % 3, 3, 16, 16), dtype=np.float32) for n in range(12)]
    got, errors = {}, []

    def one(n):
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{world['node'].port}")
            got[n] = _http_infer(world, TORCH, xs[n], True, True, client).as_numpy("OUTPUT__0")
            client.close()
        except Exception as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for n, x in enumerate(xs):
        np.testing.assert_allclose(got[n], framework(world, TORCH, x)["OUTPUT__0"],
                                   rtol=1e-4, atol=1e-5)


# --- infer: the image form ---------------------------------------------------------------------

def _legacy(world, model) -> dict:
    answer = world["node"].detect(world["image"], bid=world["bids"][model]).json()
    assert answer["status"] == "success", answer
    return answer["result"]


def _same_result(got: dict, legacy: dict) -> None:
    # The bundle reports the file it read: the image form's is the node's temporary copy.
    assert got.pop("path") != legacy.pop("path")
    assert got.keys() == legacy.keys() and got["label"] == legacy["label"]
    np.testing.assert_allclose(got["scores"], legacy["scores"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", [TORCH, ONNX])
def test_an_image_over_rest_gives_the_legacy_detect_result(world, model):
    data = np.array([world["image"].read_bytes()], dtype=object)
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(data)  # an image is no UTF-8 text: binary
    for binary_out in (True, False):
        out = httpclient.InferRequestedOutput("result", binary_data=binary_out)
        result = world["http"].infer(model, [tensor], outputs=[out])
        text = result.as_numpy("result")[0]
        _same_result(json.loads(text), _legacy(world, model))


@pytest.mark.parametrize("model", [TORCH, ONNX])
def test_an_image_over_grpc_gives_the_legacy_detect_result(world, model):
    tensor = grpcclient.InferInput("picture", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([world["image"].read_bytes()], dtype=object))
    result = world["grpc"].infer(model, [tensor])
    assert result.get_response(as_json=True)["outputs"][0]["name"] == "result"
    _same_result(json.loads(result.as_numpy("result")[0]), _legacy(world, model))


# --- errors ------------------------------------------------------------------------------------

def _bad_requests():
    good = np.zeros((1, 3, 16, 16), np.float32)
    return [
        ("wrong shape", "INPUT__0", "FP32", np.zeros((1, 3, 20, 16), np.float32),
         "'INPUT__0' has shape [1, 3, 20, 16]"),
        ("wrong rank", "INPUT__0", "FP32", np.zeros((3, 16, 16), np.float32), "has shape"),
        ("wrong dtype", "INPUT__0", "FP64", good.astype(np.float64), "is FP64"),
        ("wrong name", "pixels", "FP32", good, "has no input 'pixels'"),
        ("not an image", "image", "BYTES", np.array([b"no picture"], dtype=object), None),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda c: c[0])
def test_requests_that_do_not_fit_the_model_are_protocol_errors(world, case):
    _, name, datatype, array, problem = case
    if problem is None:  # the image form: the bundle's own pre-processing refuses it
        problem, http_status, grpc_status = "pre-processing", "422", "FAILED_PRECONDITION"
    else:
        http_status, grpc_status = "400", "INVALID_ARGUMENT"
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as http_error:
        world["http"].infer(TORCH, [tensor])
    assert http_error.value.status() == http_status and problem in http_error.value.message()
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as grpc_error:
        world["grpc"].infer(TORCH, [tensor])
    assert grpc_error.value.status() == f"StatusCode.{grpc_status}"
    assert problem in grpc_error.value.message()


def test_an_unknown_model_or_output_is_an_error(world):
    x = np.zeros((1, 3, 16, 16), np.float32)
    for client_module, client in ((httpclient, world["http"]), (grpcclient, world["grpc"])):
        tensor = client_module.InferInput("INPUT__0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("no-such-model", [tensor])
        assert "'no-such-model'" in unknown.value.message()
        assert unknown.value.status() in ("404", "StatusCode.NOT_FOUND")
        with pytest.raises(InferenceServerException) as output:
            client.infer(TORCH, [tensor], outputs=[client_module.InferRequestedOutput("nope")])
        assert "has no output 'nope'" in output.value.message()


_BINARY_INPUT = (b'{"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1], '
                 b'"parameters": {"binary_data_size": %d}}]}')


@pytest.mark.parametrize("json_part, binary, header, problem", [
    (b"{not json", b"", None, "JSON object"),
    (b"[]", b"", None, "JSON object"),
    (b'{"inputs": []}', b"", None, "non-empty list"),
    (b'{"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1]}]}', b"", None,
     "neither 'data' nor binary"),
    (b'{"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [-2], "data": []}]}', b"",
     None, "non-negative"),
    (b'{"id": 5, "inputs": []}', b"", None, "'id'"),
    (_BINARY_INPUT % 4, b"\0" * 4, "999", "Inference-Header-Content-Length"),
    (_BINARY_INPUT % 4, b"\0" * 4, "many", "Inference-Header-Content-Length"),
    (_BINARY_INPUT % 8, b"\0" * 4, "json", "binary_data_size 8"),
    (_BINARY_INPUT % 4, b"\0" * 8, "json", "4 binary bytes after the inputs"),
    (_BINARY_INPUT % 4, b"\0" * 4, None, "JSON object"),  # binary without the header
    (b'{"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1], "data": [1]}], '
     b'"outputs": "all"}', b"", None, "'outputs'"),
])
def test_malformed_rest_requests_are_400_errors(world, json_part, binary, header, problem):
    headers = {} if header is None else {
        "Inference-Header-Content-Length": str(len(json_part)) if header == "json" else header}
    answer = requests.post(f"{world['node'].base}/v2/models/{TORCH}/infer",
                           data=json_part + binary, headers=headers, timeout=30)
    assert answer.status_code == 400, answer.text
    assert problem in answer.json()["error"]


def test_unknown_v2_paths_are_protocol_404s(world):
    answer = requests.get(world["node"].base + "/v2/repository/index", timeout=10)
    assert answer.status_code == 404
    assert "no Open Inference Protocol endpoint" in answer.json()["error"]


# --- the node's guard applies -------------------------------------------------------------------

def test_the_token_and_tls_guard_both_doors(tmp_path):
    from tests.e2e.test_tls import make_cert

    token = "oip-token-51b2"
    _, _, cert, key = make_cert(tmp_path, "node")
    node = NodeProcess(tmp_path / "storage", env={
        "AISRV_AUTH_TOKEN": token, "AISRV_TLS_CERT": str(cert), "AISRV_TLS_KEY": str(key)}).start()
    try:
        refused = requests.get(node.base + "/v2/health/live", verify=str(cert), timeout=10)
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        bearer = {"Authorization": f"Bearer {token}"}
        live = requests.get(node.base + "/v2/health/live", headers=bearer, verify=str(cert),
                            timeout=10)
        assert live.status_code == 200 and live.json() == {"live": True}
        ready = requests.get(node.base + "/v2/health/ready", headers=bearer, verify=str(cert),
                             timeout=10)
        assert ready.status_code == 503 and ready.json() == {"ready": False}  # no model yet
        address = f"127.0.0.1:{node.oip_grpc_port}"
        with pytest.raises(InferenceServerException):  # plain text to a TLS port
            grpcclient.InferenceServerClient(address).is_server_live(client_timeout=10)
        secure = grpcclient.InferenceServerClient(address, ssl=True,
                                                  root_certificates=str(cert))
        with pytest.raises(InferenceServerException) as caught:
            secure.is_server_live()
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        assert secure.is_server_live(headers={"authorization": f"Bearer {token}"})
        secure.close()
    finally:
        node.stop()
