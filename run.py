"""Run an AIServing OnBoard node: `python run.py [--port N] [--debug] [--profile] [--demo]`.

Reads `settings.py` beside this file unless AISRV_SETTINGS or --settings
names another one.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(HERE, "src", "aiserving")):  # a source checkout
    sys.path.insert(0, os.path.join(HERE, "src"))
else:  # a release-pack: the compiled package lies beside this file
    sys.path.insert(0, HERE)

if __name__ == "__main__":
    from aiserving.cli import main

    default = None if os.environ.get("AISRV_SETTINGS") else os.path.join(HERE, "settings.py")
    main(["serve", *sys.argv[1:]], default_settings=default if default and os.path.exists(default) else None)
