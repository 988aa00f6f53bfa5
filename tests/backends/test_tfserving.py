"""The tensorflow-serving backend against a stand-in TF Serving computing a real SavedModel."""

import http.client
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from aiserving.backends import create_backend
from aiserving.backends import tfserving as tfs
from aiserving.errors import BundleError, ModelLoadFailed
from tests.support import tfserving_models as tm
from tests.support.node import ROOT
from tests.support.tfserving_standin import TFServingStandIn

ADAPTERS = ["restful", "grpc"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tm.export_models(tmp_path_factory.mktemp("tfserving") / "tiny")


@pytest.fixture(scope="module")
def server(models):
    standin = TFServingStandIn(models, "tiny", policy="all").start()
    yield standin
    standin.stop()


@pytest.fixture(autouse=True)
def healthy(server):
    """Every test starts against a healthy server serving every version."""
    yield
    server.fault, server.delay_s, server.policy, server.tensor_form = None, 0.0, "all", "field"
    if server._http is None:
        server.start()


def backend(server, adapter, **settings):
    return create_backend("tensorflow-serving", {
        "be.tfsrv.host": "127.0.0.1", "be.tfsrv.adapter": adapter,
        "be.tfsrv.rest_port": server.rest_port, "be.tfsrv.grpc_port": server.grpc_port,
        "be.tfsrv.timeout_s": 10.0, **settings})


def images(n, seed=0):
    # float64, as vendor scripts often return: gRPC must cast it to the signature's float32
    return np.random.default_rng(seed).random((n, 8, 8, 3))


def loaded(server, storage, adapter, **bundle_args):
    b = backend(server, adapter)
    b.load(tm.write_bundle(storage, "tiny", **bundle_args))
    return b


def test_the_module_loads_protos_without_running_tensorflow():
    # A fresh process, as an inference process: TensorFlow's package init (seconds, hundreds
    # of MB) must not run, and vendor code importing tensorflow afterwards gets the real one.
    code = ("import sys; import aiserving.backends.tfserving as m; "
            "assert 'tensorflow.python' not in sys.modules, 'tensorflow ran'; "
            "import tensorflow as tf; from tensorflow.core.framework import tensor_pb2; "
            "p = tf.make_tensor_proto([[1.5, 2.5]]); assert isinstance(p, tensor_pb2.TensorProto); "
            "print(m._to_ndarray(p).tolist(), tf.constant(2.0).numpy())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": f"{ROOT / 'src'}", "PATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[[1.5, 2.5]] 2.0"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_batch_is_one_call_equal_to_tensorflow(server, models, storage, adapter):
    b = loaded(server, storage, adapter)
    port = server.rest_port if adapter == "restful" else server.grpc_port
    assert b.device == f"remote:127.0.0.1:{port}"
    assert b.input_ranks() == [4, 0]
    x = images(5)
    before = len(server.calls)
    scores, embedding = b.predict([x, np.asarray(1.5)])
    assert server.calls[before:] == [(adapter, 10, "predict", {"image": (5, 8, 8, 3), "gain": ()})]
    want = tm.reference(models, 10, "predict", image=x, gain=np.float32(1.5))
    assert scores.dtype == embedding.dtype == np.float32
    np.testing.assert_allclose(scores, want["scores"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(embedding, want["embedding"], rtol=1e-6, atol=1e-7)
    if adapter == "restful":  # columnar, named, with the contract's default signature
        body = server.last_request
        assert body["signature_name"] == "predict" and sorted(body["inputs"]) == ["gain", "image"]
    b.unload()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_modelext_version_pins_a_version(server, models, storage, adapter):
    b = loaded(server, storage, adapter, modelext={
        "version": "2", "tensors": {"input": ["image", "gain"], "input_type": ["1", "0"],
                                    "output": ["scores", "embedding"]}})
    x = images(3, seed=1)
    scores, _ = b.predict([x, np.asarray(1.5, np.float32)])
    assert server.calls[-1][:2] == (adapter, 2)
    v2 = tm.reference(models, 2, "predict", image=x, gain=np.float32(1.5))["scores"]
    v10 = tm.reference(models, 10, "predict", image=x, gain=np.float32(1.5))["scores"]
    np.testing.assert_allclose(scores, v2, rtol=1e-6, atol=1e-7)
    assert not np.allclose(v2, v10, atol=1e-3)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_pinned_version_the_server_does_not_serve_fails_the_load(server, storage, adapter):
    server.policy = "latest"  # TF Serving's default: only the newest version is loaded
    bundle = tm.write_bundle(storage, "tiny", modelext={"version": 2, "tensors": {
        "input": ["image", "gain"], "input_type": ["1", "0"]}})
    with pytest.raises(BundleError, match=rf"bundle {bundle.fullhash}: .*version 2 of model "
                                          r"tiny"):
        backend(server, adapter).load(bundle)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_one_unnamed_input_and_sorted_outputs(server, models, storage, adapter):
    b = loaded(server, storage, adapter, gain=None,
               modelext={"signature_name": "serving_default"})
    assert b.input_ranks() == [4]
    x = images(4, seed=2)
    embedding, scores = b.predict([x])  # no tensors.output: sorted by name
    want = tm.reference(models, 10, "serving_default", image=x)
    np.testing.assert_allclose(scores, want["scores"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(embedding, want["embedding"], rtol=1e-6, atol=1e-7)
    if adapter == "restful":
        assert server.last_request["signature_name"] == "serving_default"
        assert isinstance(server.last_request["inputs"], list)  # the bare batch


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_one_output_whose_name_rest_leaves_out(server, models, storage, adapter):
    b = loaded(server, storage, adapter, gain=None, modelext={"signature_name": "scores"})
    x = images(2, seed=3)
    (scores,) = b.predict([x])
    np.testing.assert_allclose(scores, tm.reference(models, 10, "scores", image=x)["scores"],
                               rtol=1e-6, atol=1e-7)


def test_grpc_answers_in_tensor_content_too(server, models, storage):
    server.tensor_form = "content"
    b = loaded(server, storage, "grpc")
    x = images(3, seed=4)
    scores, _ = b.predict([x, np.asarray(0.5)])
    want = tm.reference(models, 10, "predict", image=x, gain=np.float32(0.5))["scores"]
    np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("value", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[1.5, -2]], np.float64),
    np.array([1, 2, 3], np.int32), np.array([[7]], np.int64), np.array([True, False]),
    np.array([1.5, 2.25], np.float16), np.array(3.5, np.float32), np.array([255, 0], np.uint8),
    np.array([b"ab", b"c"], dtype=object), np.zeros((0, 4), np.float32)])
def test_tensor_codec_agrees_with_tensorflow(value):
    proto = tf.make_tensor_proto(value)
    np.testing.assert_array_equal(tfs._to_ndarray(proto), tf.make_ndarray(proto))
    ours = tfs.predict_pb2.PredictRequest().inputs["x"]
    tfs._fill_tensor(ours, value, tfs.types_pb2.DT_INVALID, "x")
    back = tf.make_ndarray(ours)
    assert back.dtype == tf.make_ndarray(proto).dtype
    np.testing.assert_array_equal(back, tf.make_ndarray(proto))
    if value.dtype != object and value.size:  # the typed *_val form the real server answers
        field = tf.make_tensor_proto(value)
        field.ClearField("tensor_content")
        field.ClearField(tfs._FIELD_OF[field.dtype])
        numbers = value.view(np.uint16) if value.dtype == np.float16 else value
        getattr(field, tfs._FIELD_OF[field.dtype]).extend(numbers.ravel().tolist())
        np.testing.assert_array_equal(tfs._to_ndarray(field), value)


def test_a_short_value_list_repeats_its_last_value_as_tensorflow_does():
    proto = tf.make_tensor_proto(np.zeros((2, 2), np.float32))
    proto.ClearField("tensor_content")
    proto.float_val.extend([1.0, 2.0])
    np.testing.assert_array_equal(tfs._to_ndarray(proto), tf.make_ndarray(proto))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_server_down_is_a_clear_error_and_the_same_backend_reconnects(server, models, storage,
                                                                     adapter):
    b = loaded(server, storage, adapter)
    x = images(2, seed=5)
    first = b.predict([x, np.asarray(1.5)])  # a kept-alive connection / a ready channel
    server.stop()
    port = server.rest_port if adapter == "restful" else server.grpc_port
    with pytest.raises(tfs.TFServingError, match=rf"TensorFlow Serving at 127\.0\.0\.1:{port} "
                                                 r"cannot be reached: .*(?i:connection refused)"
                                                 r".*model 'tiny'") as failed:
        b.predict([x, np.asarray(1.5)])
    assert "Traceback" not in str(failed.value)
    server.start()
    again = b.predict([x, np.asarray(1.5)])
    for a, e in zip(again, first):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_slow_server_times_out_naming_the_time(server, storage, adapter):
    b = backend(server, adapter, **{"be.tfsrv.timeout_s": 0.5})
    b.load(tm.write_bundle(storage, "tiny"))
    server.fault, server.delay_s = "slow", 2.0
    with pytest.raises(tfs.TFServingError, match=r"TensorFlow Serving at 127\.0\.0\.1:\d+ did "
                                                 r"not answer within 0\.5 s \(model 'tiny'"):
        b.predict([images(2), np.asarray(1.5)])
    server.fault = None
    (scores, _) = b.predict([images(2), np.asarray(1.5)])
    assert scores.shape == (2, 4)


@pytest.mark.parametrize("adapter,fault,message", [
    ("restful", "bad_json", r"answered with a body that is not a JSON object"),
    ("restful", "wrong_keys", r"answered predict without 'outputs' \(keys: result\)"),
    ("restful", "ragged", r"answered output '\w+' that is not a regular array"),
    ("restful", "wrong_shape", r"answered output 'scores' of shape \(2, 4\) for a batch of 3"),
    ("restful", "missing_output", r"answered without output 'embedding' \(it sent: scores\)"),
    ("restful", "error_status", r"answered HTTP 500: the stand-in was told to fail"),
    ("grpc", "wrong_shape", r"answered output 'scores' of shape \(2, 4\) for a batch of 3"),
    ("grpc", "missing_output", r"answered without output 'embedding' \(it sent: scores\)"),
    ("grpc", "error_status", r"answered INTERNAL: the stand-in was told to fail"),
])
def test_malformed_answers_are_clear_errors(server, storage, adapter, fault, message):
    b = loaded(server, storage, adapter)
    server.fault = fault
    with pytest.raises(tfs.TFServingError, match=r"TensorFlow Serving at 127\.0\.0\.1:\d+ "
                                                 + message + r".*model 'tiny'"):
        b.predict([images(3), np.asarray(1.5)])
    server.fault = None
    assert b.predict([images(3), np.asarray(1.5)])[0].shape == (3, 4)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_wrong_input_shape_is_the_servers_clear_error(server, storage, adapter):
    b = loaded(server, storage, adapter)
    with pytest.raises(tfs.TFServingError, match=r"answered (HTTP 400|INVALID_ARGUMENT): .*"
                                                 r"model 'tiny'"):
        b.predict([np.zeros((2, 5, 5, 3)), np.asarray(1.5)])


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("name,modelext,message", [
    ("nosuch", None, r"(Could not find any versions of model nosuch|model 'nosuch')"),
    ("tiny", {"signature_name": "nope"}, r"has no signature 'nope' for model 'tiny' \(it has: "
                                         r"predict, scores, serving_default\); set modelext "
                                         r"signature_name"),
    ("tiny", {"tensors": {"input": ["image", "picture"]}},
     r"modelext tensors.input \['image', 'picture'\] does not match the inputs of signature "
     r"'predict' .*\(gain, image\)"),
    ("tiny", {"tensors": {"input": ["image", "gain"], "output": ["scores", "logits"]}},
     r"modelext tensors.output names logits, which signature 'predict' .* lacks"),
    ("tiny", {}, r"signature 'predict' of model 'tiny' .* has inputs gain, image: name them in "
                 r"modelext tensors.input"),
    ("tiny", {"version": "two"}, r"modelext 'version' must be a whole number, got 'two'"),
])
def test_load_checks_the_bundle_against_the_served_model(server, storage, adapter, name,
                                                         modelext, message):
    bundle = tm.write_bundle(storage, name, modelext=modelext)
    with pytest.raises(BundleError, match=rf"bundle {bundle.fullhash}: .*{message}"):
        backend(server, adapter).load(bundle)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_server_down_at_load_time_fails_the_load(server, storage, adapter):
    server.stop()
    with pytest.raises(ModelLoadFailed, match=r"cannot load: TensorFlow Serving at 127\.0\.0\.1:"
                                              r"\d+ cannot be reached: .*model 'tiny'"):
        backend(server, adapter).load(tm.write_bundle(storage, "tiny"))


def test_feeds_that_do_not_fit_the_signature(server, storage):
    b = loaded(server, storage, "restful")
    with pytest.raises(ValueError, match=r"takes 2 input\(s\) \(image, gain\) but "
                                         r"pre-processing gave 1"):
        b.predict([images(1)])


@pytest.mark.parametrize("adapter,status", [("restful", "HTTP 404"), ("grpc", "NOT_FOUND")])
def test_errors_carry_the_servers_message(server, storage, adapter, status):
    b = loaded(server, storage, adapter, modelext={"version": 2, "tensors": {
        "input": ["image", "gain"], "input_type": ["1", "0"]}})
    server.policy = "latest"  # the server unloaded version 2 after the load
    before = len(server.calls)
    with pytest.raises(tfs.TFServingError, match=rf"TensorFlow Serving at 127\.0\.0\.1:\d+ "
                                                 rf"answered {status}: Servable not found for "
                                                 r"request: Specific\(tiny, 2\) \(model 'tiny' "
                                                 r"version 2, (REST|gRPC) predict\)"):
        b.predict([images(1), np.asarray(1.5)])
    assert len(server.calls) == before


def test_the_standin_answers_the_row_format_as_documented(server, models):
    # The backend sends the columnar form; the stand-in also speaks the row form:
    # "instances" -> "predictions", per-item objects for several outputs, bare values for one.
    x = images(2, seed=6)
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    conn.request("POST", "/v1/models/tiny:predict", json.dumps({  # serving_default
        "instances": [{"image": item.tolist()} for item in x]}))
    rows = json.loads(conn.getresponse().read())["predictions"]
    conn.request("POST", "/v1/models/tiny/versions/2:predict", json.dumps({
        "signature_name": "scores", "instances": x.tolist()}))
    bare = json.loads(conn.getresponse().read())["predictions"]
    conn.close()
    want = tm.reference(models, 10, "serving_default", image=x)
    np.testing.assert_allclose([r["scores"] for r in rows], want["scores"], rtol=1e-6)
    np.testing.assert_allclose([r["embedding"] for r in rows], want["embedding"], rtol=1e-6)
    np.testing.assert_allclose(bare, tm.reference(models, 2, "scores", image=x)["scores"],
                               rtol=1e-6)
