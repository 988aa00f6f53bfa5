"""JSM bundles: the record, the store, the vendor code they carry, the legacy encrypted
format (`crypto`) and sealed bundles.

May import config and errors only; never backends, broker, node or api.
"""

from aiserving.bundle.record import DistroRecord, disthash_of, implhash_of
from aiserving.bundle.store import Bundle, BundleStore

__all__ = ["Bundle", "BundleStore", "DistroRecord", "disthash_of", "implhash_of"]
