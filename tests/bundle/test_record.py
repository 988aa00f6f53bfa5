import hashlib
import json

import pytest

from aiserving.bundle import BundleStore, DistroRecord, disthash_of, implhash_of
from aiserving.errors import BundleError, ModelNotFound
from tests.support.bundles import write_bundle


def good_distro(**changes) -> dict:
    labels = ["cat", "dog"]
    data = {
        "name": "pets", "labels": labels, "head": "YOLOv3", "bone": "darknet",
        "impl": "pytorch.structureSplit", "version": "1", "threshold": ["0.5", "0.7"],
        "mapping": ["Cat", "Dog"], "modelext": json.dumps({"tensors": {"input": ["x"]}}),
    }
    data["implhash"] = implhash_of(labels, "YOLOv3", "darknet", "pytorch.structureSplit")
    data["disthash"] = disthash_of(data["threshold"], data["mapping"])
    data.update(changes)
    return data


def test_hashes_follow_the_contract():
    expected = hashlib.md5("catdogYOLOv3darknetpytorch.structureSplit".encode()).hexdigest()
    assert implhash_of(["cat", "dog"], "YOLOv3", "darknet", "pytorch.structureSplit") == expected
    assert disthash_of(["0.5"], ["Cat"]) == hashlib.md5("0.5Cat".encode()).hexdigest()


def test_good_record_parses():
    record = DistroRecord.from_dict(good_distro())
    assert record.backend_type == "pytorch"
    assert record.model_type == "structureSplit"
    assert record.fullhash == record.implhash + "-1"
    assert record.ext == {"tensors": {"input": ["x"]}}
    assert record.threshold_values == [0.5, 0.7]


@pytest.mark.parametrize("changes, field", [
    ({"labels": "cat"}, "labels"),
    ({"threshold": ["0.5"]}, "threshold"),
    ({"mapping": ["Cat", "Dog", "Bird"]}, "mapping"),
    ({"threshold": ["0.5", "high"]}, "threshold"),
    ({"impl": "pytorch"}, "impl"),
    ({"version": 1}, "version"),
    ({"version": ""}, "version"),
    ({"modelext": "{not json"}, "modelext"),
    ({"modelext": {"tensors": {}}}, "modelext"),
    ({"implhash": "0" * 32}, "implhash"),
    ({"name": None}, "name"),
])
def test_bad_record_names_the_field(changes, field):
    with pytest.raises(BundleError) as err:
        DistroRecord.from_dict(good_distro(**changes))
    assert f"'{field}'" in err.value.message


def test_missing_field_is_named():
    data = good_distro()
    del data["bone"]
    with pytest.raises(BundleError, match="'bone' is missing"):
        DistroRecord.from_dict(data)


def test_implhash_mismatch_gives_both_hashes():
    data = good_distro(implhash="f" * 32)
    with pytest.raises(BundleError) as err:
        DistroRecord.from_dict(data)
    assert "f" * 32 in err.value.message and good_distro()["implhash"] in err.value.message


def test_unknown_keys_survive_a_rewrite():
    record = DistroRecord.from_dict(good_distro(vendor_note="keep me"))
    assert record.to_dict()["vendor_note"] == "keep me"


def test_store_resolves_every_kind_of_reference(storage):
    v1 = write_bundle(storage, name="tiny", version="1")
    v2 = write_bundle(storage, name="tiny", version="2")
    store = BundleStore(storage)
    assert store.resolve(v1.fullhash).path == v1.path
    assert store.resolve(f"{v1.record.implhash}/1").path == v1.path
    assert store.resolve(v1.record.implhash).path == v2.path  # newest version
    assert store.resolve("tiny").path == v2.path
    with pytest.raises(ModelNotFound):
        store.resolve("nothing-here")
    with pytest.raises(ModelNotFound):
        store.resolve(v1.record.implhash + "-9")
    with pytest.raises(ModelNotFound):
        store.resolve("../../etc/passwd")


def test_store_rejects_a_bundle_stored_under_the_wrong_folder(storage):
    bundle = write_bundle(storage)
    data = json.loads((bundle.path / "distros.json").read_text())
    data["version"] = "7"
    (bundle.path / "distros.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="stored as"):
        BundleStore(storage).load(bundle.record.implhash, "1")


def test_store_reports_broken_json_and_missing_vendor_files(storage):
    bundle = write_bundle(storage)
    (bundle.path / "post_dataprocess.py").unlink()
    with pytest.raises(BundleError, match="post_dataprocess.py"):
        BundleStore(storage).load(bundle.record.implhash, "1")
    (bundle.path / "distros.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        BundleStore(storage).load(bundle.record.implhash, "1")
    assert BundleStore(storage).all() == []  # malformed bundles are left out of listings
