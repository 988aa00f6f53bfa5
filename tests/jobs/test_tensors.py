"""Open Inference Protocol tensors (jobs/tensors.py) and raw tensor batches through a real pipeline."""

import struct

import numpy as np
import pytest
import torch

from aiserving.jobs import tensors as oip
from aiserving.backends import create_backend
from aiserving.bundle.vendor import VendorCode
from aiserving.errors import InferenceError, InputError
from aiserving.inference.pipeline import Item, Pipeline
from tests.support.bundles import tiny_model, write_bundle, write_image

META = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]},
                   {"name": "gain", "datatype": "INT64", "shape": [1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]}


@pytest.mark.parametrize("datatype", [d for d in oip.DATATYPES if d != "BYTES"])
def test_every_numeric_datatype_round_trips_raw_json_and_arrays(datatype):
    dtype = np.dtype(oip.DATATYPES[datatype])
    array = (np.arange(6) % 2 == 1) if datatype == "BOOL" else np.arange(6).astype(dtype)
    array = array.reshape(2, 3)
    tensor = oip.from_array("x", array)
    assert tensor.datatype == datatype and tensor.shape == [2, 3]
    assert len(tensor.raw) == 6 * dtype.itemsize
    from_json = oip.from_elements("x", datatype, [2, 3], array.tolist())  # nested lists
    from_flat = oip.from_elements("x", datatype, [2, 3], tensor.elements())
    from_raw = oip.from_raw("x", datatype, [2, 3], tensor.raw)
    for other in (from_json, from_flat, from_raw):
        np.testing.assert_array_equal(other.array(), array)
        assert other.array().dtype == dtype


def test_bytes_elements_carry_a_little_endian_length():
    tensor = oip.from_elements("s", "BYTES", [2], ["ab", "\u00e9"])
    assert tensor.raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 2) + "\u00e9".encode()
    assert tensor.array().tolist() == [b"ab", "\u00e9".encode()]
    assert tensor.elements() == ["ab", "\u00e9"]
    with pytest.raises(InputError, match="runs past the end"):
        oip.from_raw("s", "BYTES", [1], struct.pack("<I", 9) + b"abc")
    with pytest.raises(InputError, match="holds 2 element"):
        oip.from_raw("s", "BYTES", [2], oip.join_bytes([b"one"]))


@pytest.mark.parametrize("args, problem", [
    (("FP32", [2, 2], [1.0, 2.0, 3.0]), "holds 4 element"),
    (("FP32", [2, -1], [1.0, 2.0]), "non-negative integers"),
    (("FP32", "2", [1.0, 2.0]), "non-negative integers"),
    (("FP17", [1], [1.0]), "datatype 'FP17' is not supported"),
    (("UINT8", [1], [300]), "does not fit UINT8"),
    (("INT32", [1], [1.5]), "does not fit INT32"),
    (("FP32", [1], ["1"]), "must be numbers"),
    (("FP32", [1], 1.0), "must be a list"),
])
def test_json_data_that_does_not_fit_is_refused_naming_the_input(args, problem):
    with pytest.raises(InputError, match=problem) as caught:
        oip.from_elements("pixels", *args)
    assert "'pixels'" in caught.value.message


def test_raw_data_of_the_wrong_size_is_refused():
    with pytest.raises(InputError, match="needs 16 bytes of data; 12 arrived"):
        oip.from_raw("x", "FP32", [2, 2], b"\0" * 12)


def test_a_deeply_nested_body_does_not_exhaust_the_stack():
    data = [1.0]
    for _ in range(5000):
        data = [data]
    assert oip.from_elements("x", "FP32", [1], data).array().tolist() == [1.0]


def _inputs(batch=2, image_dtype="FP32", gain_shape=(1,)):
    image = oip.Tensor("image", image_dtype, [batch, 3, 16, 16], b"")
    gain = oip.Tensor("gain", "INT64", list(gain_shape), b"")
    return image, gain


def test_inputs_come_back_in_the_models_order():
    image, gain = _inputs()
    assert [t.name for t in oip.check_inputs([gain, image], META, "m")] == ["image", "gain"]


@pytest.mark.parametrize("change, problem", [
    (lambda i, g: [i, g, oip.Tensor("extra", "FP32", [1], b"")], "has no input 'extra'"),
    (lambda i, g: [i], "needs input\\(s\\) 'gain'"),
    (lambda i, g: [i, g, g], "more than once"),
    (lambda i, g: [_inputs(image_dtype="FP64")[0], g], "is FP64; model 'm' takes FP32"),
    (lambda i, g: [oip.Tensor("image", "FP32", [2, 3, 20, 16], b""), g], "has shape"),
    (lambda i, g: [oip.Tensor("image", "FP32", [2, 3, 16], b""), g], "has shape"),
    (lambda i, g: [i, _inputs(gain_shape=(2,))[1]], "has shape"),
])
def test_a_request_that_does_not_fit_the_model_names_the_problem(change, problem):
    image, gain = _inputs()
    with pytest.raises(InputError, match=problem):
        oip.check_inputs(change(image, gain), META, "m")


def test_batch_sizes_of_per_item_inputs_must_agree():
    meta = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                       {"name": "b", "datatype": "FP32", "shape": [-1, 2]}]}
    with pytest.raises(InputError, match="batch sizes differ"):
        oip.check_inputs([oip.Tensor("a", "FP32", [1, 2], b""),
                          oip.Tensor("b", "FP32", [3, 2], b"")], meta, "m")


def test_the_image_form_is_one_bytes_input_to_a_model_without_bytes_inputs():
    picture = oip.from_elements("image", "BYTES", [1], [b"\x89PNG..."])
    assert oip.is_image_request([picture], META)
    assert not oip.is_image_request([picture, picture], META)
    assert not oip.is_image_request([picture], {"inputs": [{"name": "t", "datatype": "BYTES",
                                                            "shape": [-1]}]})
    assert oip.image_of(picture) == b"\x89PNG..."
    with pytest.raises(InputError, match="exactly one BYTES element"):
        oip.image_of(oip.from_elements("image", "BYTES", [2], [b"a", b"b"]))


def test_jobs_and_replies_keep_names_types_shapes_and_bytes():
    tensors = [oip.from_array("a", np.arange(4, dtype=np.int16)),
               oip.from_array("b", np.ones((2, 2), np.float64)),
               oip.from_elements("c", "BYTES", [1], ["x"])]
    for back in (oip.unpack(*oip.pack(tensors)), oip.decode_reply(oip.encode_reply(tensors))):
        assert back == tensors
    header, data = oip.pack(tensors)
    with pytest.raises(InputError, match="malformed"):
        oip.unpack(header, data + b"!")
    with pytest.raises(InputError, match="malformed"):
        oip.unpack(b"{not json", data)


def test_outputs_are_picked_by_name():
    tensors = oip.name_outputs([np.zeros(1), np.ones(1)], {"outputs": [{"name": "first"}]})
    assert [t.name for t in tensors] == ["first", "OUTPUT__1"]
    assert [t.name for t in oip.pick_outputs(tensors, ["OUTPUT__1"], "m")] == ["OUTPUT__1"]
    with pytest.raises(InputError, match="has no output 'nope'"):
        oip.pick_outputs(tensors, ["nope"], "m")


def test_description_takes_the_frameworks_word_and_fills_in_from_a_trial_batch():
    feeds = [np.zeros((1, 3, 16, 16), np.float32), np.zeros((1,), np.int64)]
    outputs = [np.zeros((1, 3), np.float32)]
    specs = {"inputs": [{"name": "image", "dtype": None, "shape": None},
                        {"name": "gain", "dtype": "int64", "shape": [1]}], "outputs": None}
    described = oip.describe(specs, feeds, outputs, shared=[False, True])
    assert described == {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]},
                   {"name": "gain", "datatype": "INT64", "shape": [1]}],  # one per batch
        "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 3]}]}
    meta = oip.metadata("m", ["1"], "onnx.onnx", described)
    assert meta["platform"] == "onnxruntime_onnx" and meta["inputs"] == described["inputs"]


# --- raw tensors through the pipeline: no pre/post-processing, batches joined --------------

@pytest.fixture
def pipeline(storage):
    bundle = write_bundle(storage, mode="structureEmbed", seed=7)
    backend = create_backend("pytorch", {"be.trpy.device": "cpu", "be.trpy.mixed_mode": False})
    backend.load(bundle)
    return Pipeline(bundle, VendorCode.load(bundle), backend)


def _expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tiny_model(3, 3, 7)(torch.from_numpy(x)).numpy()


def test_raw_tensor_items_equal_the_framework_and_run_beside_image_items(pipeline, tmp_path):
    rng = np.random.default_rng(0)
    xs = [rng.random((n, 3, 16, 16), dtype=np.float32) for n in (1, 3, 2)]
    odd = rng.random((1, 3, 20, 20), dtype=np.float32)  # another shape: its own call
    items = [Item({"uuid": str(n)}, tensors=[x]) for n, x in enumerate(xs + [odd])]
    picture = Item({"uuid": "p", "path": str(write_image(tmp_path / "p.png", seed=1))})
    timings = pipeline.run(items[:2] + [picture] + items[2:])
    assert timings.failed == 0
    for item, x in zip(items, xs + [odd]):
        assert item.error is None, item.error
        assert len(item.result) == 1 and item.result[0].shape == (len(x), 3)
        np.testing.assert_allclose(item.result[0], _expected(x), rtol=1e-4, atol=1e-5)
    assert picture.error is None and set(picture.result) >= {"scores", "label"}


def test_a_raw_item_the_framework_refuses_fails_alone(pipeline):
    good = Item({"uuid": "g"}, tensors=[np.zeros((1, 3, 16, 16), np.float32)])
    bad = Item({"uuid": "b"}, tensors=[np.zeros((1, 5, 16, 16), np.float32)])
    also_bad = Item({"uuid": "b2"}, tensors=[np.zeros((1, 5, 16, 16), np.float32)])
    pipeline.run([good, bad, also_bad])
    assert good.error is None
    for item in (bad, also_bad):
        assert isinstance(item.error, InferenceError) and "inference failed" in item.error.message


# --- what the frameworks tell of their tensors -------------------------------------------

def test_tensorflow_names_its_graph_tensors_and_a_shared_input_keeps_its_shape(storage):
    from tests.support import tf_models

    model = tf_models.write_frozen(storage)
    backend = create_backend("tensorflow", {"backend.threads": 1, "be.tf.device": "cpu"})
    backend.load(model.bundle)
    described = oip.describe(backend.tensor_specs(), None, None, shared=[False, True])
    assert described["inputs"] == [
        {"name": "image:0", "datatype": "FP32", "shape": [-1, 16, 16, 3]},
        {"name": "is_train:0", "datatype": "BOOL", "shape": []}]  # input_type "0"
    assert [o["name"] for o in described["outputs"]] == ["scores:0", "mean:0", "probs:0"]
    assert described["outputs"][0] == {"name": "scores:0", "datatype": "FP32", "shape": [-1, 3]}


def test_a_quantized_tflite_model_is_described_as_the_floats_the_node_takes_and_gives(storage):
    from tests.support import tflite_models

    backend = create_backend("tensorflow-lite", {"backend.threads": 1})
    backend.load(tflite_models.write_bundle(storage, "quantized", seed=1))
    specs = backend.tensor_specs()
    assert [s["dtype"] for s in specs["inputs"] + specs["outputs"]] == [None, None, None]
    feeds = [np.zeros((1, 16, 16, 3), np.float32)]
    described = oip.describe(specs, feeds, backend.predict(feeds))
    assert described["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 16, 16, 3]}]
    assert [(o["datatype"], o["shape"]) for o in described["outputs"]] == [("FP32", [-1, 3]),
                                                                          ("FP32", [-1, 4])]
