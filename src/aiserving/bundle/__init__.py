"""JSM bundles: the record, the store, and the vendor code they carry."""

from aiserving.bundle.record import DistroRecord, disthash_of, implhash_of
from aiserving.bundle.store import Bundle, BundleStore

__all__ = ["Bundle", "BundleStore", "DistroRecord", "disthash_of", "implhash_of"]
