"""AIServing OnBoard: an edge inference appliance serving JSM bundles."""

__version__ = "1.0.0"
