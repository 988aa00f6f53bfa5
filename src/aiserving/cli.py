"""The `aiserving` command (and `run.py`): serve, demo, bundle and settings tools."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time

import aiserving
from aiserving import __version__
from aiserving.config import Settings, settings_table
from aiserving.errors import AiservingError, ConfigError
from aiserving.logs import setup_logging

log = logging.getLogger("aiserving")


def main(argv: list[str] | None = None, default_settings: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aiserving", description="AIServing OnBoard node")
    parser.add_argument("--version", action="version", version=f"AIServing OnBoard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a node (what run.py does)")
    serve.add_argument("--settings", default=default_settings,
                       help="settings.py to read (default: AISRV_SETTINGS, else built-in defaults)")
    serve.add_argument("--port", type=int, help="REST port (setting http.port)")
    serve.add_argument("--debug", action="store_true", help="verbose logs")
    serve.add_argument("--profile", action="store_true",
                       help="log per-stage timings (queue wait, pre, infer, post) of every batch")
    serve.add_argument("--demo", action="store_true",
                       help="make the demo bundle if needed and load it on start")

    demo = sub.add_parser("demo", help="make the demo bundle and sample images in storage")
    demo.add_argument("--settings", default=default_settings)

    check = sub.add_parser("check-bundle", help="validate a JSM bundle folder")
    check.add_argument("path")
    check.add_argument("--settings", default=default_settings,
                       help="settings.py naming the device key for a sealed bundle")

    sub.add_parser("settings-table", help="print the settings table (markdown)")

    bundle = sub.add_parser("bundle", help="bundle tools (check, encrypt)")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    bcheck = bundle_sub.add_parser("check", help="validate a JSM bundle folder")
    bcheck.add_argument("path")
    bcheck.add_argument("--settings", default=default_settings,
                        help="settings.py naming the device key for a sealed bundle")
    encrypt = bundle_sub.add_parser(
        "encrypt", help="seal a bundle's code and model files for one device key "
        "(AES-256-GCM, key wrapped with RSA-OAEP)")
    encrypt.add_argument("path", help="the bundle folder")
    encrypt.add_argument("--device-key", required=True,
                         help="the device's public key (PEM; `aiserving device-key` made it)")
    encrypt.add_argument("--out", help="folder to write the sealed bundle to "
                         "(default: <bundle>.sealed beside it)")
    encrypt.add_argument("--also", action="append", default=[], metavar="FILE",
                         help="seal this file of the bundle too (repeatable)")

    devkey = sub.add_parser("device-key", help="make this device's key pair for sealed "
                            "bundles (or show its fingerprint)")
    devkey.add_argument("--settings", default=default_settings)
    devkey.add_argument("--out", help="private key path (default: setting crypto.device_key)")
    devkey.add_argument("--force", action="store_true",
                        help="replace an existing key (bundles sealed for it stop loading)")

    args = parser.parse_args(argv)
    sys.exit(_COMMANDS[args.command](args))


def _load_settings(args, overrides=None) -> Settings:
    overrides = dict(overrides or {})
    settings = Settings.load(getattr(args, "settings", None), overrides)
    if not settings["node.name"]:
        settings = Settings.load(getattr(args, "settings", None),
                                 {**overrides, "node.name": socket.gethostname()})
    return settings


def cmd_serve(args) -> int:
    overrides = {}
    if args.port is not None:
        overrides["http.port"] = args.port
    if args.debug:
        overrides["log.level"] = "DEBUG"
    if args.profile:
        overrides["profile"] = True
    try:
        settings = _load_settings(args, overrides)
        setup_logging(settings["log.level"])
        if args.demo:
            from aiserving.demo import ensure_demo

            bundle, samples = ensure_demo(settings.storage)
            autoload = list(settings["autoload"])
            if bundle.fullhash not in autoload:
                autoload.append(bundle.fullhash)
            settings = _load_settings(args, {**overrides, "autoload": autoload,
                                             "node.name": settings["node.name"]})
    except ConfigError as exc:
        print(f"aiserving: {exc.message}", file=sys.stderr)
        return 2
    from aiserving.appliance import Appliance

    build = aiserving.build_info()
    log.info("AIServing OnBoard %s (%s package at %s), storage %s", __version__,
             "compiled" if build["compiled"] else "source", build["package"], settings.storage)
    on_ready = _announce_demo(samples) if args.demo else None
    return Appliance(settings).run(on_ready)


def _announce_demo(samples):
    def on_ready(appliance) -> None:
        node = appliance.node
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = node.all_backends()
            if any(b["serving"] for b in states):
                break
            failed = [b for b in states if b["switch"]["status"] == "failed"]
            if failed:
                log.error("the demo model failed to load: %s", failed[0]["switch"]["error"])
                return
            time.sleep(0.2)
        s = appliance.settings
        host = "127.0.0.1" if s["http.host"] in ("0.0.0.0", "[::]", "::") else s["http.host"]
        body = json.dumps({"path": str(samples / "circle.jpg")})
        print(f"\nThe demo model is loaded. Ask it what the sample image shows:\n\n"
              f"  curl -s -X POST {'https' if s['tls.cert'] else 'http'}://{host}:{s['http.port']}"
              f"/api/v1alpha/detect {'--cacert ' + s['tls.cert'] + ' ' if s['tls.cert'] else ''}"
              f"-H 'Content-Type: application/json' -d '{body}'\n\n"
              f"(more samples in {samples}; Ctrl-C stops the node)\n", flush=True)
    return on_ready


def cmd_demo(args) -> int:
    from aiserving.demo import ensure_demo

    try:
        settings = _load_settings(args)
    except ConfigError as exc:
        print(f"aiserving: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(settings["log.level"])
    bundle, samples = ensure_demo(settings.storage)
    print(f"demo bundle {bundle.fullhash} at {bundle.path}; sample images in {samples}")
    return 0


def cmd_check_bundle(args) -> int:
    from pathlib import Path

    from aiserving.bundle.store import BundleStore
    from aiserving.bundle.vendor import VendorCode

    path = Path(args.path).resolve()
    try:
        bundle = BundleStore(path.parent.parent.parent).load(path.parent.name, path.name)
        if bundle.sealed_files():
            bundle = bundle.with_device_key(_load_settings(args)["crypto.device_key"])
        VendorCode.load(bundle)
    except AiservingError as exc:
        print(f"bad bundle: {exc.message}", file=sys.stderr)
        return 1
    print(f"ok: {bundle.record.name} ({bundle.record.impl}) {bundle.fullhash}")
    return 0


def cmd_settings_table(args) -> int:
    print(settings_table())
    return 0


def cmd_bundle(args) -> int:
    if args.bundle_command == "check":
        return cmd_check_bundle(args)
    from pathlib import Path

    from aiserving.bundle import sealed

    source = Path(args.path)
    target = Path(args.out) if args.out else source.with_name(source.name + ".sealed")
    if not (source / "distros.json").is_file():
        return _fail(f"{source} is not a bundle folder (no distros.json)")
    if target.exists():
        return _fail(f"{target} already exists; name another folder with --out")
    try:
        public = sealed.read_public_key(Path(args.device_key))
    except (OSError, ValueError, TypeError) as exc:
        return _fail(f"--device-key {args.device_key}: not a PEM RSA key: {exc}")
    try:
        names = sealed.seal_bundle(source, target, public, args.also)
    except (OSError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(f"sealed {len(names)} files for device key "
          f"{sealed.show(sealed.fingerprint(public))} into {target}:")
    for name in names:
        print(f"  {name}")
    return 0


def cmd_device_key(args) -> int:
    from pathlib import Path

    from aiserving.bundle import sealed

    try:
        path = Path(args.out) if args.out else Path(_load_settings(args)["crypto.device_key"])
    except ConfigError as exc:
        return _fail(exc.message)
    if path.exists() and not args.force:
        try:
            key = sealed.DeviceKey.load(str(path))
        except AiservingError as exc:
            return _fail(exc.message)
        print(f"device key {path} exists (--force replaces it)\n"
              f"fingerprint {sealed.show(key.digest)}")
        return 0
    try:
        digest = sealed.make_device_key(path)
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}")
    print(f"private key {path} (mode 0600; keep it on this device)\n"
          f"public key  {sealed.public_path(path)} (give it to model vendors)\n"
          f"fingerprint {sealed.show(digest)}")
    return 0


def _fail(message: str) -> int:
    print(f"aiserving: {message}", file=sys.stderr)
    return 1


_COMMANDS = {"serve": cmd_serve, "demo": cmd_demo, "check-bundle": cmd_check_bundle,
             "settings-table": cmd_settings_table, "bundle": cmd_bundle,
             "device-key": cmd_device_key}
