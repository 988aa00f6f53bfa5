"""The TensorFlow backend class against raw TensorFlow: frozen GraphDefs and SavedModels."""

import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from aiserving.backends import create_backend
from aiserving.bundle import BundleStore, DistroRecord
from aiserving.bundle.vendor import VendorCode
from aiserving.errors import BundleError, ConfigError
from aiserving.inference.pipeline import Item, Pipeline
from tests.support import tf_models
from tests.support.tf_models import listing, write_frozen, write_image, write_unfrozen

CPU = {"be.tf.device": "cpu"}


def backend(**settings):
    return create_backend("tensorflow", {**CPU, **settings})


def loaded(model, **settings):
    b = backend(**settings)
    b.load(model.bundle)
    return b


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The backend's temporary directories land here, so a test can see them."""
    folder = tmp_path / "private-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def batch(n=5, seed=0):
    return np.random.default_rng(seed).random((n, tf_models.SIZE, tf_models.SIZE, 3),
                                               dtype=np.float32)


def assert_outputs(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.fixture(params=["frozen", "unfrozen-old", "unfrozen-folder"])
def model(request, storage, tmp_path):
    if request.param == "frozen":
        return write_frozen(storage)
    return write_unfrozen(storage, tmp_path, layout=request.param.split("-")[1])


def test_batch_equals_the_raw_session(model):
    b = loaded(model)
    x = batch(5)
    for flag in (False, True):
        got = b.predict([x, np.asarray(flag)])
        assert [o.shape for o in got] == [(5, 3), (5,), (5, 3)]  # modelext order
        assert_outputs(got, model.run(x, flag))
    # float64 feeds are cast to the graph's float32
    assert_outputs(b.predict([x.astype(np.float64), np.asarray(False)]), model.run(x, False))
    assert b.input_ranks() == [4, 0]
    assert b.device == "cpu"
    b.unload()


def test_the_shared_flag_is_fed_once_for_the_whole_batch(storage):
    model = write_frozen(storage)
    b = loaded(model)
    x = batch(6)
    # One scalar for six items; the two branches give different outputs.
    train, infer = b.predict([x, np.asarray(True)]), b.predict([x, np.asarray(False)])
    assert not np.allclose(train[2], infer[2])
    assert_outputs(train, model.run(x, True))
    # A flag handed as a batch of one takes the placeholder's scalar shape.
    assert_outputs(b.predict([x, np.asarray([True])]), model.run(x, True))


def test_outputs_come_in_modelext_order_and_names_may_omit_the_port(storage):
    tensors = {"input": ["image", "is_train:0"], "output": ["probs:0", "mean", "scores:0"],
               "input_type": ["1", "0"]}
    model = write_frozen(storage, tensors=tensors)
    x = batch(3)
    got = loaded(model).predict([x, np.asarray(False)])
    scores, mean, probs = model.run(x, False)
    assert_outputs(got, [probs, mean, scores])


def test_pipeline_with_opencv_vendor_code_matches_the_reference(storage, tmp_path):
    """Vendor pre/post around the backend: batch-of-one image feeds, a shared flag."""
    model = write_frozen(storage, is_train=True, batch_of_one=True)
    images = [write_image(tmp_path / f"img{n}.png", seed=n) for n in range(4)]
    pipeline = Pipeline(model.bundle, VendorCode.load(model.bundle), loaded(model))
    items = [Item({"uuid": str(n), "path": str(p)}) for n, p in enumerate(images)]
    timings = pipeline.run(items)
    assert timings.failed == 0, [i.error for i in items]
    for item, path in zip(items, images):
        want = model.reference(path)
        assert item.result["label"] == want["label"]
        for key in ("scores", "mean", "probs"):
            np.testing.assert_allclose(item.result[key], want[key], rtol=1e-5, atol=1e-6)


def test_unfrozen_old_layout_leaves_the_bundle_folder_untouched(storage, tmp_path, private_tmp):
    model = write_unfrozen(storage, tmp_path, layout="old")
    before = listing(model.bundle.path)
    contents = {p: (model.bundle.path / p).read_bytes() for p, kind, *_ in before if kind == "file"}
    b = loaded(model)
    assert len(list(private_tmp.iterdir())) == 1  # the loader's view of the bundle
    assert_outputs(b.predict([batch(2), np.asarray(True)]), model.run(batch(2), True))
    b.unload()
    assert listing(model.bundle.path) == before
    assert {p: (model.bundle.path / p).read_bytes() for p in contents} == contents
    assert list(private_tmp.iterdir()) == []


def test_unfrozen_without_tensor_names_uses_the_serving_signature_in_key_order(storage, tmp_path):
    model = write_unfrozen(storage, tmp_path, layout="folder", tensors={})
    b = loaded(model)
    x = batch(3)
    scores, mean, probs = model.run(x, True)
    # serving_default: inputs image, is_train; outputs mean, probs, scores (sorted keys)
    assert_outputs(b.predict([x, np.asarray(True)]), [mean, probs, scores])


def test_unload_closes_the_session(storage, tmp_path, private_tmp):
    model = write_unfrozen(storage, tmp_path, layout="old")
    b = loaded(model)
    session = b._session
    b.unload()
    with pytest.raises(RuntimeError, match="closed Session"):
        session.run(model.tensors["output"][0], {"image:0": batch(1)})
    with pytest.raises(ValueError):
        b.predict([batch(1), np.asarray(False)])
    assert list(private_tmp.iterdir()) == []


def test_input_ranks_and_a_graph_that_fixes_the_batch_at_one(storage):
    """Unknown rank -> None; a batch axis fixed at 1 runs item by item."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        anything = tf.compat.v1.placeholder(tf.float32, None, name="anything")
        tf.identity(x * 2.0 + tf.reduce_sum(anything), name="y")
    bundle = _bundle(storage, "frozen", {"model_core": graph.as_graph_def().SerializeToString()},
                     {"input": ["x:0", "anything:0"], "output": ["y:0"], "input_type": ["1", "0"]})
    b = backend()
    b.load(bundle)
    assert b.input_ranks() == [2, None]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = b.predict([x, np.ones((2, 2), np.float32)])
    np.testing.assert_allclose(y, x * 2 + 4)


# --- errors -------------------------------------------------------------------------


def _bundle(storage, mode, files, tensors, version="1"):
    record = DistroRecord.create(name="bad", labels=list(tf_models.LABELS), head="h", bone="b",
                                 impl=f"tensorflow.{mode}", version=version,
                                 modelext={"tensors": tensors} if tensors is not None else "")
    return BundleStore(storage).write(record, {"pre_dataprocess.py": "", "post_dataprocess.py": "",
                                               **files})


def test_garbage_frozen_model_core(storage):
    bundle = _bundle(storage, "frozen", {"model_core": b"\xffnot a graph at all" * 10},
                     tf_models.frozen_tensors())
    with pytest.raises(BundleError, match=f"bundle {bundle.fullhash}: model_core is not a "
                                          "TensorFlow GraphDef"):
        backend().load(bundle)


def test_frozen_graph_that_still_holds_variables(storage):
    graph, _, _ = tf_models._v1_graph(0)
    bundle = _bundle(storage, "frozen", {"model_core": graph.as_graph_def().SerializeToString()},
                     tf_models.frozen_tensors())
    with pytest.raises(BundleError, match=r"model_core still holds variables \(b1, b2, w1, w2\)"):
        backend().load(bundle)


def test_missing_model_core(storage):
    bundle = _bundle(storage, "frozen", {}, tf_models.frozen_tensors())
    with pytest.raises(BundleError, match="file 'model_core' is missing"):
        backend().load(bundle)
    bundle = _bundle(storage, "unfrozen", {}, tf_models.frozen_tensors(), version="2")
    with pytest.raises(BundleError, match="file 'model_core' is missing"):
        backend().load(bundle)


def test_garbage_unfrozen_model_core_and_the_temp_dir_goes(storage, tmp_path, private_tmp):
    model = write_unfrozen(storage, tmp_path, layout="old")
    (model.bundle.path / "model_core").write_bytes(b"\xffgarbage" * 50)
    with pytest.raises(BundleError) as err:
        backend().load(model.bundle)
    message = err.value.message
    assert message.startswith(f"bundle {model.bundle.fullhash}: model_core is not a "
                              "SavedModel's saved_model.pb: ")
    assert str(private_tmp) not in message and "model_core" in message
    assert list(private_tmp.iterdir()) == []


def test_unfrozen_without_variables_folder(storage, tmp_path, private_tmp):
    model = write_unfrozen(storage, tmp_path, layout="old")
    for f in (model.bundle.path / "variables").iterdir():
        f.unlink()
    (model.bundle.path / "variables").rmdir()
    with pytest.raises(BundleError, match="its folder 'variables/' \\(beside model_core\\) is "
                                          "missing"):
        backend().load(model.bundle)
    assert list(private_tmp.iterdir()) == []


def test_model_core_folder_without_saved_model_pb(storage):
    bundle = _bundle(storage, "unfrozen", {}, tf_models.frozen_tensors())
    (bundle.path / "model_core").mkdir()
    with pytest.raises(BundleError, match="folder model_core/ holds no saved_model.pb"):
        backend().load(bundle)


@pytest.mark.parametrize("where", ["input", "output"])
def test_modelext_naming_a_tensor_the_graph_lacks(storage, tmp_path, where):
    tensors = tf_models.frozen_tensors()
    tensors[where] = [tensors[where][0], "nope:0"] + tensors[where][2:]
    model = write_frozen(storage, tensors=tensors)
    with pytest.raises(BundleError) as err:
        backend().load(model.bundle)
    message = err.value.message
    assert f"modelext names {where} tensor 'nope:0', which the graph does not have" in message
    assert "image:0" in message and "is_train:0" in message  # a few of the graph's names


def test_frozen_modelext_without_tensors(storage):
    model = write_frozen(storage, tensors={})
    with pytest.raises(BundleError, match="modelext names no input tensors"):
        backend().load(model.bundle)


def test_input_type_must_fit_the_inputs(storage):
    tensors = {**tf_models.frozen_tensors(), "input_type": ["1"]}
    with pytest.raises(BundleError, match="input_type must hold one"):
        backend().load(write_frozen(storage, tensors=tensors).bundle)


def test_unknown_model_type(storage):
    bundle = _bundle(storage, "keras", {}, None)
    with pytest.raises(BundleError, match="tensorflow model type 'keras' is not supported"):
        backend().load(bundle)


# --- device ---------------------------------------------------------------------------


def test_missing_gpu_falls_back_to_cpu_with_a_warning(storage, caplog):
    if tf.config.list_physical_devices("GPU"):
        pytest.fail("this test expects a machine without a GPU; run the device checks instead")
    model = write_frozen(storage)
    b = backend(**{"be.tf.device": "auto"})
    with caplog.at_level(logging.WARNING):
        b.load(model.bundle, "gpu:3")  # the backend's own device wins over the setting
    assert b.device == "cpu"
    assert "TensorFlow device is gpu:3 but no GPU is visible: using cpu" in caplog.text
    assert_outputs(b.predict([batch(2), np.asarray(False)]), model.run(batch(2), False))
    caplog.clear()
    b = backend(**{"be.tf.device": "cuda:1"})
    with caplog.at_level(logging.WARNING):
        b.load(model.bundle)
    assert b.device == "cpu" and "cuda:1" in caplog.text
    b = backend(**{"be.tf.device": "auto"})
    b.load(model.bundle)
    assert b.device == "cpu"


def fake_gpus(monkeypatch, visible: bool):
    """Two GPUs in TensorFlow's device listings (nothing runs on them)."""
    gpus = ["gpu0", "gpu1"]
    listed = {"physical": tf.config.list_physical_devices, "visible": tf.config.get_visible_devices}
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else listed["physical"](kind))
    monkeypatch.setattr(tf.config, "get_visible_devices",
                        lambda kind=None: (gpus if visible else []) if kind == "GPU"
                        else listed["visible"](kind))

    def cannot_show(devices, kind=None):
        raise RuntimeError("Visible devices cannot be modified after being initialized")
    monkeypatch.setattr(tf.config, "set_visible_devices", cannot_show)


def test_gpus_hidden_by_an_earlier_cpu_backend_are_not_claimed(storage, monkeypatch, caplog):
    fake_gpus(monkeypatch, visible=False)
    b = backend()
    with caplog.at_level(logging.WARNING):
        b.load(write_frozen(storage).bundle, "gpu:0")
    assert b.device == "cpu"
    assert "an earlier cpu backend hid the GPUs from this process" in caplog.text


def test_gpu_n_places_the_graph_on_that_gpu(storage, tmp_path, monkeypatch, private_tmp):
    """With two GPUs (faked: only the listing), gpu:1 scopes every op to GPU 1; soft
    placement still runs the graph here, on the CPU."""
    fake_gpus(monkeypatch, visible=True)
    for model in (write_frozen(storage), write_unfrozen(storage, tmp_path, layout="old")):
        b = backend()
        b.load(model.bundle, "cuda:1")
        assert b.device == "gpu:1"
        ops = {op.name: op.device for op in b._graph.get_operations()}
        for name in ("image", "is_train", "scores", "mean", "probs", "pool", "Conv2D"):
            assert ops[name] == "/device:GPU:1", (name, ops[name])
        assert_outputs(b.predict([batch(2), np.asarray(True)]), model.run(batch(2), True))
        b.unload()


@pytest.mark.parametrize("name", ["tpu", "cpu:1", "gpu:x"])
def test_unknown_device(storage, name):
    with pytest.raises(ConfigError, match="is not one of auto, cpu, gpu, gpu:N"):
        backend().load(write_frozen(storage).bundle, name)


@pytest.mark.parametrize("user, seen", [(None, "2"), ("0", "0")])
def test_cpp_logging_is_quieted_unless_the_user_set_it(user, seen):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if user is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", "import os, aiserving.backends.tensorflow; "
                          "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == seen
