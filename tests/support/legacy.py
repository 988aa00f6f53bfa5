"""The old product's own settings template (its settings_tmpl.py), filled in as a device has it."""

from __future__ import annotations

_TEMPLATE = """\
settings = {{
    'port': "{grpc}",
    'storage': "{storage}",
    'preheat': "{preheat}",
    'redis.host': "localhost",
    'redis.port': "{redis_port}",
    'be.tfsrv.host': "127.0.0.1", 'be.tfsrv.adapter': "restful",
    'be.tfsrv.grpc_port': "8500", 'be.tfsrv.rest_port': "8501",
    'be.trpy.mixed_mode': "1", 'be.trpy.device': "cuda",
    'be.rknnpy.target': "rk3399pro",
}}
"""


def legacy_settings(grpc: str = "[::]:50051", storage: str = "/home/jk-97/aiserving_storage",
                    preheat: str = "/home/jk-97/aiserving_storage/preheat.jpeg",
                    redis_port: int | str = 6379) -> str:
    """The text of a device's settings.py; defaults are the template's own values."""
    return _TEMPLATE.format(grpc=grpc, storage=storage, preheat=preheat, redis_port=redis_port)
