"""The `aiserving` command (and `run.py`): serve, demo, bundle and settings tools, and
the commands that talk to a running node (`models`, `load`, `push`... in node_commands.py).

One parser library (click) for all of them; `main()` is the console script.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from types import SimpleNamespace

import click

from aiserving import __version__
import aiserving
from aiserving.config import Settings, settings_table
from aiserving.errors import AiservingError, ConfigError
from aiserving.logs import setup_logging

log = logging.getLogger("aiserving")

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_SETTINGS_HELP = "settings.py to read (default: AISRV_SETTINGS, else built-in defaults)"


def main(argv: list[str] | None = None, default_settings: str | None = None) -> None:
    cli.main(args=argv, prog_name="aiserving", obj={"default_settings": default_settings})


@click.group(context_settings=_CONTEXT, help="AIServing OnBoard node")
@click.version_option(__version__, "--version", message="AIServing OnBoard %(version)s")
def cli() -> None:
    pass


def _run(command, **options) -> None:
    """Run one of the commands below with argparse-style `args`; exit with its status."""
    ctx = click.get_current_context()
    if "settings" in options and options["settings"] is None:
        options["settings"] = (ctx.obj or {}).get("default_settings")
    ctx.exit(command(SimpleNamespace(**options)))


def _settings_option(help_text: str | None = _SETTINGS_HELP):
    return click.option("--settings", default=None, help=help_text)


@cli.command(help="run a node (what run.py does)", context_settings=_CONTEXT)
@_settings_option()
@click.option("--port", type=int, help="REST port (setting http.port)")
@click.option("--debug", is_flag=True, help="verbose logs")
@click.option("--profile", is_flag=True,
              help="log per-stage timings (queue wait, pre, infer, post) of every batch")
@click.option("--demo", is_flag=True, help="make the demo bundle if needed and load it on start")
def serve(**options) -> None:
    _run(cmd_serve, **options)


@cli.command(help="make the demo bundle and sample images in storage", context_settings=_CONTEXT)
@_settings_option(None)
def demo(**options) -> None:
    _run(cmd_demo, **options)


@cli.command("check-bundle", help="validate a JSM bundle folder", context_settings=_CONTEXT)
@click.argument("path")
@_settings_option("settings.py naming the device key for a sealed bundle")
def check_bundle(**options) -> None:
    _run(cmd_check_bundle, **options)


@cli.command("settings-table", help="print the settings table (markdown)",
             context_settings=_CONTEXT)
def settings_table_command() -> None:
    _run(cmd_settings_table)


@cli.group(help="bundle tools (check, pack, encrypt)", context_settings=_CONTEXT)
def bundle() -> None:
    pass


@bundle.command("check", help="validate a JSM bundle folder", context_settings=_CONTEXT)
@click.argument("path")
@_settings_option("settings.py naming the device key for a sealed bundle")
def bundle_check(**options) -> None:
    _run(cmd_check_bundle, **options)


@bundle.command("encrypt", context_settings=_CONTEXT,
                help="seal a bundle's code and model files for one device key "
                "(AES-256-GCM, key wrapped with RSA-OAEP)")
@click.argument("path")
@click.option("--device-key", required=True,
              help="the device's public key (PEM; `aiserving device-key` made it)")
@click.option("--out", help="folder to write the sealed bundle to "
              "(default: <bundle>.sealed beside it)")
@click.option("--also", multiple=True, metavar="FILE",
              help="seal this file of the bundle too (repeatable)")
def bundle_encrypt(**options) -> None:
    _run(cmd_bundle, bundle_command="encrypt", **{**options, "also": list(options["also"])})


@bundle.command("pack", context_settings=_CONTEXT,
                help="pack a bundle folder as the archive a node imports "
                "(`aiserving push` and gRPC UploadBin + ImportModelDistro take it)")
@click.argument("path")
@click.option("-o", "--out", help="archive to write (default: <implhash>-<version>.tar.gz "
              "in the current folder)")
@click.option("--force", is_flag=True, help="replace an existing archive")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def bundle_pack(**options) -> None:
    _run(cmd_bundle_pack, **options)


@cli.command("device-key", context_settings=_CONTEXT,
             help="make this device's key pair for sealed bundles (or show its fingerprint)")
@_settings_option(None)
@click.option("--out", help="private key path (default: setting crypto.device_key)")
@click.option("--force", is_flag=True,
              help="replace an existing key (bundles sealed for it stop loading)")
def device_key(**options) -> None:
    _run(cmd_device_key, **options)


@cli.command(context_settings=_CONTEXT,
             help="exit 0 when this box's node answers GET /healthz on the port its settings "
             "name, 1 when not (the images' HEALTHCHECK runs it)")
@_settings_option()
@click.option("--timeout", type=float, default=4.0, show_default=True,
              help="seconds to wait for the answer")
def health(**options) -> None:
    _run(cmd_health, **options)


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
            from aiserving.cli.demo import ensure_demo

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
        body = json.dumps({"path": str(samples / "circle.jpg")})
        print(f"\nThe demo model is loaded. Ask it what the sample image shows:\n\n"
              f"  curl -s -X POST {s.local_rest_url}"
              f"/api/v1alpha/detect {'--cacert ' + s['tls.cert'] + ' ' if s['tls.cert'] else ''}"
              f"-H 'Content-Type: application/json' -d '{body}'\n\n"
              f"(more samples in {samples}; Ctrl-C stops the node)\n", flush=True)
    return on_ready


def cmd_demo(args) -> int:
    from aiserving.cli.demo import ensure_demo

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


def cmd_health(args) -> int:
    import ssl
    import urllib.error
    import urllib.request

    try:
        url = Settings.load(args.settings).local_rest_url + "/healthz"
    except ConfigError as exc:
        print(f"unhealthy: {exc.message}", file=sys.stderr)
        return 1
    probe = None
    if url.startswith("https:"):
        # Our own node on this box, asked only whether it answers: its certificate may name
        # the device, not the loopback address.
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=probe) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: {url}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    print(f"healthy: {url}")
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


def cmd_bundle_pack(args) -> int:
    """The archive a node's import takes (what its export writes)."""
    from pathlib import Path

    from aiserving.bundle.archive import pack_export
    from aiserving.bundle.source import read_bundle
    from aiserving.cli.client import sha256_of

    try:
        record = read_bundle(Path(args.path))
        out = Path(args.out) if args.out else Path(f"{record.fullhash}.tar.gz")
        if out.exists() and not args.force:
            return _error(f"{out} exists; --force replaces it")
        pack_export(Path(args.path), record, out)
    except AiservingError as exc:
        return _error(exc.message)
    except OSError as exc:
        return _error(f"cannot write {args.out or 'the archive'}: {exc.strerror or exc}")
    size, checksum = out.stat().st_size, sha256_of(out)
    if args.as_json:
        print(json.dumps({"fullhash": record.fullhash, "name": record.name, "path": str(out),
                          "bytes": size, "sha256": checksum}, indent=2))
    else:
        print(f"packed {record.name} ({record.fullhash}) into {out} "
              f"({size} bytes, sha256 {checksum})")
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


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _fail(message: str) -> int:
    print(f"aiserving: {message}", file=sys.stderr)
    return 1


def _register_node_commands() -> None:
    from aiserving.cli import node_commands

    for command in node_commands.COMMANDS:
        cli.add_command(command)


_register_node_commands()
