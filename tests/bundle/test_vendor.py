import sys
import textwrap

import pytest

from aiserving.bundle.vendor import VendorCode, load_module
from aiserving.errors import BundleError
from tests.support.bundles import POST_LEGACY_PY, write_bundle

# Vendor code that imports a sibling helper with a plain `import helper`: the classic way
# two bundles collide in sys.modules.
PRE_WITH_HELPER = textwrap.dedent('''\
    import helper

    def pre_dataprocess(infer_data):
        return {"feed_list": [], "passby": helper.WHO}
''')


def test_two_bundles_with_same_module_names_load_side_by_side(storage):
    a = write_bundle(storage, name="a", seed=1, pre=PRE_WITH_HELPER,
                     extra={"helper.py": "WHO = 'bundle a'\n"})
    b = write_bundle(storage, name="b", seed=2, pre=PRE_WITH_HELPER,
                     extra={"helper.py": "WHO = 'bundle b'\n"})
    code_a, code_b = VendorCode.load(a), VendorCode.load(b)
    assert code_a.pre({"path": "x"})["passby"] == "bundle a"
    assert code_b.pre({"path": "x"})["passby"] == "bundle b"
    assert code_a.pre is not code_b.pre
    assert "helper" not in sys.modules
    assert "pre_dataprocess" not in sys.modules
    assert load_module(a, "pre_dataprocess.py").__name__ != load_module(b, "pre_dataprocess.py").__name__


def test_post_convention_is_chosen_by_parameter_count(storage):
    assert VendorCode.load(write_bundle(storage, name="new", seed=1)).post_arity == 1
    assert VendorCode.load(write_bundle(storage, name="old", seed=2, post=POST_LEGACY_PY)).post_arity == 3
    two = "def post_dataprocess(a, b):\n    return {}\n"
    with pytest.raises(BundleError, match="takes 2 arguments"):
        VendorCode.load(write_bundle(storage, name="two", seed=3, post=two))


def test_vendor_code_that_fails_to_import_is_a_bundle_error(storage):
    bundle = write_bundle(storage, pre="import no_such_module_anywhere\n")
    with pytest.raises(BundleError, match="pre_dataprocess.py failed to import: ModuleNotFoundError"):
        VendorCode.load(bundle)


def test_missing_function_is_named(storage):
    bundle = write_bundle(storage, pre="def something_else():\n    pass\n")
    with pytest.raises(BundleError, match="defines no function pre_dataprocess"):
        VendorCode.load(bundle)
