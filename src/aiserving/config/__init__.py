"""Settings: defaults < settings.py < AISRV_* environment; one table, kept by area.

`loader` reads and checks them, `checks` holds the value checks, one module per area
holds its part of the table (`box`, `redis`, `frameworks`, `doors`, `limits`,
`serving`), `redis_url` the text of a redis URL. Imports nothing of ours but errors.
"""

from __future__ import annotations

import json

from aiserving.config.checks import Setting
from aiserving.config.loader import AREAS, SETTINGS, Settings, env_name

__all__ = ["AREAS", "SETTINGS", "Setting", "Settings", "env_name", "settings_table"]


def settings_table() -> str:
    """The settings reference (docs/settings.md), generated from the table so it cannot
    drift: one markdown table per area."""
    parts = []
    for area in AREAS:
        rows = [f"### {area.TITLE}", "", area.__doc__.strip(), "",
                "| key | environment | default | meaning |", "|---|---|---|---|"]
        for s in area.SETTINGS:
            default = json.dumps(s.default) if not isinstance(s.default, str) else f'"{s.default}"'
            rows.append(f"| `{s.key}` | `{env_name(s.key)}` | `{default}` | {s.doc} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)
