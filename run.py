"""Run an AIServing OnBoard node: `python run.py [--port N] [--debug] [--profile] [--demo]`;
`python run.py <command> ...` runs another `aiserving` command (`device-key`, `bundle`, ...).

Reads `settings.py` beside this file unless AISRV_SETTINGS or --settings names
another one. Works from a source checkout and from a release-pack; a pack runs
only under the Python minor version and machine it was built for.
"""

import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _check_build(info_path):
    # Kept free of newer syntax: it must be able to speak under any Python.
    with open(info_path) as fh:
        info = json.load(fh)
    have = "%d.%d" % sys.version_info[:2]
    if info["python"] != have or info["machine"] != platform.machine():
        sys.stderr.write(
            "run.py: this release-pack was built for Python %s on %s and needs exactly that; "
            "it was started with Python %s on %s.\n"
            % (info["python"], info["machine"], have, platform.machine()))
        sys.exit(3)


if os.path.isdir(os.path.join(HERE, "src", "aiserving")):  # a source checkout
    sys.path.insert(0, os.path.join(HERE, "src"))
else:  # a release-pack: the compiled package lies beside this file
    _check_build(os.path.join(HERE, "BUILD_INFO.json"))
    sys.path.insert(0, HERE)

if __name__ == "__main__":
    from aiserving.cli.app import cli, main

    default = os.path.join(HERE, "settings.py")
    if os.environ.get("AISRV_SETTINGS") or not os.path.exists(default):
        default = None
    # `python run.py [serve options]` serves; `python run.py <command> ...` runs one of the
    # `aiserving` commands (device-key, bundle encrypt, models, push, ...), also from a
    # release-pack.
    commands = tuple(cli.commands)
    args = sys.argv[1:]
    main(args if args and args[0] in commands else ["serve"] + args, default_settings=default)
