import io
import json
import logging
import os
import tarfile

import pytest

from aiserving.bundle import BundleStore, disthash_of, implhash_of
from aiserving.bundle.catalog import ModelCatalog
from aiserving.errors import BundleError, ModelNotFound
from tests.support.bundles import write_bundle

LIMIT = 50 * 1024 * 1024


def pets(**changes) -> dict:
    info = {"name": "pets", "labels": ["cat", "dog"], "head": "YOLOv3", "bone": "darknet",
            "impl": "pytorch.structureSplit", "threshold": ["0.5", "0.7"],
            "mapping": ["Cat", "Dog"], "modelext": ""}
    info.update(changes)
    return info


PETS_HASH = implhash_of(["cat", "dog"], "YOLOv3", "darknet", "pytorch.structureSplit")


def catalog_for(storage, tmp_path, name="node"):
    return ModelCatalog(BundleStore(storage), tmp_path / name, LIMIT)


@pytest.fixture
def catalog(storage, tmp_path):
    return catalog_for(storage, tmp_path)


def snapshot(folder):
    """Every path under `folder` with its bytes (files) or None (folders)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


def bundle_info(bundle, **changes) -> dict:
    record = bundle.record
    info = {"name": record.name, "labels": list(record.labels), "head": record.head,
            "bone": record.bone, "impl": record.impl, "implhash": record.implhash,
            "version": record.version, "threshold": list(record.threshold),
            "mapping": list(record.mapping), "modelext": record.modelext}
    info.update(changes)
    return info


def make_tar(path, files: dict, top: str | None = None):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# -- create -----------------------------------------------------------------------------

def test_create_computes_implhash_and_writes_only_distros(catalog, storage):
    record = catalog.create(pets())
    assert record.implhash == PETS_HASH
    assert record.version == "1"
    folder = storage / "models" / PETS_HASH / "1"
    assert [p.name for p in folder.iterdir()] == ["distros.json"]
    stored = json.loads((folder / "distros.json").read_text())
    assert stored == record.to_dict()
    assert stored["disthash"] == disthash_of(["0.5", "0.7"], ["Cat", "Dog"])


def test_create_defaults_threshold_mapping_and_takes_a_matching_implhash(catalog):
    record = catalog.create(pets(threshold=[], mapping=None, version="7", implhash=PETS_HASH,
                                 modelext={"feed_batched": True}))
    assert record.threshold == ["0.5", "0.5"]
    assert record.mapping == ["cat", "dog"]
    assert record.version == "7"
    assert record.ext == {"feed_batched": True}


def test_create_refuses_a_wrong_implhash(catalog, storage):
    with pytest.raises(BundleError, match="implhash"):
        catalog.create(pets(implhash="0" * 32))
    assert not (storage / "models").exists() or snapshot(storage / "models") == {}


def test_create_refuses_an_existing_version(catalog, storage):
    catalog.create(pets())
    distros = storage / "models" / PETS_HASH / "1" / "distros.json"
    before = distros.read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        catalog.create(pets(threshold=["0.1", "0.1"]))
    assert distros.read_bytes() == before


@pytest.mark.parametrize("changes, field", [
    ({"threshold": ["0.5"]}, "threshold"),
    ({"mapping": ["Cat", "Dog", "Bird"]}, "mapping"),
    ({"labels": "catdog"}, "labels"),
    ({"head": None}, "head"),
    ({"threshold": ["high", "low"]}, "threshold"),
    ({"impl": "pytorch"}, "impl"),
])
def test_create_checks_fields(catalog, storage, changes, field):
    with pytest.raises(BundleError, match=field):
        catalog.create(pets(**changes))
    assert not (storage / "models").exists() or snapshot(storage / "models") == {}


@pytest.mark.parametrize("version", ["..", ".", "../escape", "a/b", "1 "])
def test_create_refuses_a_version_that_is_not_a_folder_name(catalog, storage, tmp_path, version):
    before = snapshot(tmp_path)
    with pytest.raises(BundleError, match="version"):
        catalog.create(pets(version=version))
    after = snapshot(tmp_path)
    assert {k for k in after if not k.startswith("storage/.import-tmp")} == set(before)


# -- records ----------------------------------------------------------------------------

def test_records_lists_valid_models_and_skips_malformed(catalog, storage, caplog):
    created = catalog.create(pets())
    written = write_bundle(storage, name="tiny")
    broken = storage / "models" / ("f" * 32) / "1"
    broken.mkdir(parents=True)
    (broken / "distros.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        records = catalog.records()
    assert sorted(r.fullhash for r in records) == sorted([created.fullhash, written.fullhash])
    assert "f" * 32 in caplog.text


# -- update_distro ----------------------------------------------------------------------

def test_update_distro_replaces_and_recomputes_disthash(catalog, storage):
    catalog.create(pets(modelext=json.dumps({"feed_batched": False})))
    record = catalog.update_distro({"implhash": PETS_HASH, "version": "1",
                                    "threshold": ["0.9", "0.1"], "mapping": ["Kitty", "Doggo"],
                                    "modelext": ""})
    assert record.threshold == ["0.9", "0.1"]
    assert record.disthash == disthash_of(["0.9", "0.1"], ["Kitty", "Doggo"])
    assert record.ext == {"feed_batched": False}  # empty modelext keeps the old one
    stored = json.loads((storage / "models" / PETS_HASH / "1" / "distros.json").read_text())
    assert stored == record.to_dict()


def test_update_distro_finds_the_newest_version_by_computed_hash(catalog, storage):
    catalog.create(pets(version="1"))
    catalog.create(pets(version="2"))
    info = pets(threshold=["0.2", "0.3"], mapping=["A", "B"], modelext='{"x": 1}')
    del info["name"]
    record = catalog.update_distro(info)
    assert record.version == "2"
    assert record.ext == {"x": 1}
    first = json.loads((storage / "models" / PETS_HASH / "1" / "distros.json").read_text())
    assert first["threshold"] == ["0.5", "0.7"]


def test_update_distro_rejects_unequal_lengths(catalog, storage):
    catalog.create(pets())
    distros = storage / "models" / PETS_HASH / "1" / "distros.json"
    before = distros.read_bytes()
    with pytest.raises(BundleError, match="mapping"):
        catalog.update_distro({"implhash": PETS_HASH, "version": "1",
                               "threshold": ["0.9", "0.1"], "mapping": ["Only one"]})
    assert distros.read_bytes() == before


def test_update_distro_of_a_missing_model(catalog):
    with pytest.raises(ModelNotFound):
        catalog.update_distro({"implhash": PETS_HASH, "version": "1",
                               "threshold": ["0.9", "0.1"], "mapping": ["A", "B"]})
    with pytest.raises(ModelNotFound):
        catalog.update_distro(pets())
    # A version no file system takes as a folder name (found by tests/api/test_fuzz_grpc.py).
    with pytest.raises(BundleError, match="1 to 128"):
        catalog.update_distro({"implhash": PETS_HASH, "version": "0" * 1000,
                               "threshold": ["0.9", "0.1"], "mapping": ["A", "B"]})


# -- delete -----------------------------------------------------------------------------

def test_delete_removes_the_version_then_the_implhash_folder(catalog, storage):
    catalog.create(pets(version="1"))
    catalog.create(pets(version="2"))
    catalog.delete(PETS_HASH, "1")
    assert not (storage / "models" / PETS_HASH / "1").exists()
    assert (storage / "models" / PETS_HASH / "2" / "distros.json").is_file()
    catalog.delete(PETS_HASH, "2")
    assert not (storage / "models" / PETS_HASH).exists()
    assert catalog.records() == []


def test_delete_of_a_missing_model(catalog):
    catalog.create(pets())
    with pytest.raises(ModelNotFound):
        catalog.delete(PETS_HASH, "9")
    with pytest.raises(ModelNotFound):
        catalog.delete("0" * 32, "1")


@pytest.mark.parametrize("implhash, version", [
    ("..", "models"), ("../..", "storage"), (PETS_HASH, ".."), (PETS_HASH, "."),
    (PETS_HASH.upper(), "1"), ("", "1"), (PETS_HASH, ""),
])
def test_delete_refuses_names_that_leave_the_store(catalog, storage, tmp_path, implhash, version):
    catalog.create(pets())
    before = snapshot(tmp_path)
    with pytest.raises((ModelNotFound, BundleError)):
        catalog.delete(implhash, version)
    assert snapshot(tmp_path) == before


# -- export and import ------------------------------------------------------------------

def test_export_then_import_into_another_storage(catalog, storage, tmp_path):
    bundle = write_bundle(storage, modelext={"feed_batched": True})
    implhash = bundle.record.implhash
    out = catalog.export(implhash, "1")
    assert out == tmp_path / "node" / "exports" / f"{implhash}.tar.gz"
    assert catalog.export_path(implhash) == out

    other = tmp_path / "storage2"
    other.mkdir()
    target = catalog_for(other, tmp_path, "node2")
    info = bundle_info(bundle, version="3", threshold=["0.1", "0.2", "0.3"],
                       mapping=["Cat", "Dog", "Bird"])
    record = target.import_archive(out, info)
    assert record.fullhash == f"{implhash}-3"

    loaded = BundleStore(other).load(implhash, "3")
    assert loaded.record.threshold == ["0.1", "0.2", "0.3"]
    assert loaded.record.mapping == ["Cat", "Dog", "Bird"]
    assert loaded.record.disthash == disthash_of(["0.1", "0.2", "0.3"], ["Cat", "Dog", "Bird"])
    assert loaded.record.ext == {"feed_batched": True}
    got = snapshot(loaded.path)
    want = snapshot(bundle.path)
    assert got.pop("distros.json") != want.pop("distros.json")
    assert got == want  # same model files, no configs.json left behind
    assert list((other / ".import-tmp").iterdir()) == []


def test_export_replaces_an_older_export(catalog, storage):
    write_bundle(storage, version="1")
    bundle = write_bundle(storage, version="2")
    first = catalog.export(bundle.record.implhash, "1")
    second = catalog.export(bundle.record.implhash, "2")
    assert first == second
    with tarfile.open(second) as tar:
        configs = json.load(tar.extractfile(f"{bundle.record.implhash}/configs.json"))
    assert configs["version"] == "2"


def test_export_path_only_for_hashes_with_an_export(catalog, storage):
    bundle = write_bundle(storage)
    assert catalog.export_path(bundle.record.implhash) is None
    catalog.export(bundle.record.implhash, "1")
    assert catalog.export_path(bundle.record.implhash) is not None
    assert catalog.export_path("../exports/" + bundle.record.implhash) is None
    assert catalog.export_path(bundle.record.implhash.upper()) is None


def test_export_of_a_missing_model(catalog):
    with pytest.raises(ModelNotFound):
        catalog.export(PETS_HASH, "1")


@pytest.fixture
def exported(storage, tmp_path, catalog):
    bundle = write_bundle(storage)
    return bundle, catalog.export(bundle.record.implhash, "1")


@pytest.fixture
def target(tmp_path):
    other = tmp_path / "storage2"
    other.mkdir()
    return catalog_for(other, tmp_path, "node2")


def test_import_refuses_an_existing_version(exported, target):
    bundle, out = exported
    target.import_archive(out, bundle_info(bundle))
    before = snapshot(target.store.root)
    with pytest.raises(BundleError, match="already exists"):
        target.import_archive(out, bundle_info(bundle, threshold=["0.9"] * 3))
    assert snapshot(target.store.root) == before


@pytest.mark.parametrize("changes", [{"implhash": "0" * 32}, {"implhash": ""},
                                     {"labels": ["cat", "dog", "cow"]}])
def test_import_refuses_a_wrong_implhash(exported, target, changes):
    bundle, out = exported
    with pytest.raises(BundleError, match="implhash"):
        target.import_archive(out, bundle_info(bundle, **changes))
    assert not target.store.root.exists()


def test_import_checks_lengths(exported, target):
    bundle, out = exported
    with pytest.raises(BundleError, match="threshold"):
        target.import_archive(out, bundle_info(bundle, threshold=["0.5"]))
    assert not target.store.root.exists()


@pytest.mark.parametrize("missing", ["pre_dataprocess.py", "post_dataprocess.py"])
def test_import_requires_the_vendor_files(tmp_path, target, missing):
    files = {"pre_dataprocess.py": b"def pre_dataprocess(d):\n    return None\n",
             "post_dataprocess.py": b"def post_dataprocess(f):\n    return {}\n",
             "model_core": b"weights"}
    del files[missing]
    archive = make_tar(tmp_path / "upload.tar.gz", files, top="whatever")
    with pytest.raises(BundleError, match=missing):
        target.import_archive(archive, pets(implhash=PETS_HASH))
    assert not target.store.root.exists()
    assert list(target.tmp_dir.iterdir()) == []


def test_import_takes_a_flat_archive_and_drops_its_records(tmp_path, target):
    files = {"pre_dataprocess.py": b"def pre_dataprocess(d):\n    return None\n",
             "post_dataprocess.py": b"def post_dataprocess(f):\n    return {}\n",
             "model_core": b"weights", "configs.json": b"{}",
             "distros.json": b'{"name": "forged"}'}
    archive = make_tar(tmp_path / "upload.tar.gz", files)
    target.import_archive(archive, pets(implhash=PETS_HASH, version="2"))
    loaded = target.store.load(PETS_HASH, "2")
    assert loaded.record.name == "pets"
    assert sorted(p.name for p in loaded.path.iterdir()) == [
        "distros.json", "model_core", "post_dataprocess.py", "pre_dataprocess.py"]


def test_import_refuses_a_malicious_archive(tmp_path, target):
    work = tmp_path / "storage2"
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [("pre_dataprocess.py", b"x"), ("post_dataprocess.py", b"x"),
                           ("../../../evil.py", b"pwned")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    before = snapshot(tmp_path)
    with pytest.raises(BundleError, match=r"\.\./\.\./\.\./evil\.py"):
        target.import_archive(archive, pets(implhash=PETS_HASH))
    after = snapshot(tmp_path)
    # Only the (now empty) private temp folder may have appeared.
    assert {k: v for k, v in after.items() if k != "storage2/.import-tmp"} == before
    assert list((work / ".import-tmp").iterdir()) == []
    assert not target.store.root.exists()


def test_import_refuses_an_archive_over_the_limit(tmp_path, exported):
    bundle, out = exported
    other = tmp_path / "storage3"
    other.mkdir()
    small = ModelCatalog(BundleStore(other), tmp_path / "node3", 1000)
    with pytest.raises(BundleError, match="more total bytes than the limit"):
        small.import_archive(out, bundle_info(bundle))
    assert not small.store.root.exists()
    assert list(small.tmp_dir.iterdir()) == []


def test_records_a_client_could_grow_without_bound_are_refused(storage, tmp_path):
    small = ModelCatalog(BundleStore(storage), tmp_path / "n", LIMIT, max_labels=3,
                         max_record_bytes=2000)
    labels = ["a", "b", "c", "d"]
    with pytest.raises(BundleError, match="4 labels; at most 3"):
        small.create(pets(labels=labels, threshold=["0.5"] * 4, mapping=labels))
    made = small.create(pets())
    with pytest.raises(BundleError, match="bytes as distros.json; at most 2000"):
        small.update_distro({"implhash": made.implhash, "version": made.version,
                             "modelext": json.dumps({"note": "x" * 5000})})
    assert small.store.record(made.implhash, made.version).modelext == ""  # unchanged


def test_a_modelext_nested_too_deep_is_refused_clearly(catalog):
    # Found by the gRPC fuzz: json's RecursionError escaped as an internal error.
    with pytest.raises(BundleError, match="'modelext' is not valid JSON"):
        catalog.create(pets(modelext="[" * 50_000))
    made = catalog.create(pets())
    with pytest.raises(BundleError, match="'modelext' is not valid JSON"):
        catalog.update_distro({"implhash": made.implhash, "version": made.version,
                               "modelext": "[" * 50_000})
