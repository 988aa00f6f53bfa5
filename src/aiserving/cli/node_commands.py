"""`aiserving models|load|unload|status|infer|push|pull`: a node, run from a terminal.

Each command talks to one node over its public APIs (client.py; options and
output in output.py): REST by
default at http://127.0.0.1:<http.port>, gRPC at the settings' grpc.address,
both taken from the local settings so that on the device itself no option is
needed. Tables for people, `--json` for scripts, and on failure one line on
stderr (`error: ...`) with an exit status that tells what went wrong:

    1  the node answered with an error (or a transfer failed its checksum)
    2  bad usage (click's own status), or a local file that cannot be used
    3  the node could not be reached (nothing listening, TLS refused, time-out)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import click

from aiserving.cli import output
from aiserving.cli.client import NodeClient, NodeRefused, NodeUnreachable, sha256_of
from aiserving.cli.output import node_command
from aiserving.status import BackendState, ProcStatus


# --- finding models and backends -------------------------------------------------------


def resolve_model(models: list[dict], ref: str) -> dict:
    """The stored model a reference names: fullhash, implhash/version, implhash (newest
    version) or name (newest version), as the node's own /switch resolves it."""
    for sep in ("/", "-"):
        head, _, tail = ref.partition(sep)
        if tail and len(head) == 32 and all(c in "0123456789abcdef" for c in head):
            found = [m for m in models if m["implhash"] == head and m["version"] == tail]
            if found:
                return found[0]
            raise NodeRefused(f"the node holds no model {head} version {tail}")
    found = [m for m in models if m["implhash"] == ref] or [m for m in models if m["name"] == ref]
    if not found:
        raise NodeRefused(f"the node holds no model {ref!r} (see `aiserving models`)")
    if len({m["implhash"] for m in found}) > 1:
        raise NodeRefused(f"model name {ref!r} is ambiguous: give its implhash "
                          f"({', '.join(sorted({m['implhash'] for m in found}))})")
    return max(found, key=lambda m: _version_key(m["version"]))


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _loaded_on(backends: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for b in backends:
        if b["model"]:
            out.setdefault(b["model"]["fullhash"], []).append(b["bid"])
    return out


# --- the commands ------------------------------------------------------------------------


@node_command("models", "list the models stored on the node, with their versions, and "
              "where each is loaded")
def models(client: NodeClient, as_json: bool) -> int:
    stored = client.models()
    loaded = _loaded_on(client.backends())
    rows = sorted(stored, key=lambda m: (m["name"], m["implhash"], _version_key(m["version"])))
    if as_json:
        output.print_json([{**m, "loaded_on": loaded.get(m["fullhash"], [])} for m in rows])
        return 0
    if not rows:
        click.echo("no models stored on the node (`aiserving push BUNDLE` stores one)")
        return 0
    table = output.table("NAME", "VERSION", "IMPL", "IMPLHASH", "LABELS", "LOADED ON")
    for m in rows:
        bids = loaded.get(m["fullhash"], [])
        table.add_row(m["name"], m["version"], m["impl"], m["implhash"], str(len(m["labels"])),
                      ", ".join(f"backend {b}" for b in bids) or "-")
    output.out().print(table)
    return 0


@node_command("load", "load a stored model (fullhash, implhash[/version] or name) on a new "
              "backend, or on --bid; waits until it serves")
@click.argument("model")
@click.option("--bid", default="", help="backend to load it on (default: a new one)")
@click.option("--device", default="", help="device of a new backend (cpu, cuda:0, ...)")
@click.option("--no-wait", is_flag=True, help="return once the node took the request")
@click.option("--wait", "wait_s", type=float, default=300.0, show_default=True,
              help="seconds to wait for the model to serve")
def load(client: NodeClient, as_json: bool, model: str, bid: str, device: str, no_wait: bool,
         wait_s: float) -> int:
    record = resolve_model(client.models(), model)
    btype = "" if bid else record["impl"].split(".", 1)[0]
    bid = client.switch(record["fullhash"], btype=btype, bid=bid, device=device)
    state = {"status": "loading", "error": ""}
    if not no_wait:
        deadline = time.monotonic() + wait_s
        with output.err().status(f"loading {record['name']} on backend {bid}",
                           spinner="dots") if sys.stderr.isatty() else nullcontext():
            while True:
                state = client.switch_state(bid)
                if state.get("status") in ("loaded", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise NodeRefused(f"backend {bid} is still {state.get('status')!r} after "
                                      f"{wait_s:.0f} s (see `aiserving status`)")
                time.sleep(0.2)
        if state["status"] == "failed":
            raise NodeRefused(f"backend {bid} failed to load {record['fullhash']}: "
                              f"{state.get('error') or 'see the node log'}")
    if as_json:
        output.print_json({"bid": bid, "model": record["fullhash"], "name": record["name"],
                     "status": state["status"]})
    else:
        verb = "loaded" if state["status"] == "loaded" else "loading"
        click.echo(f"{verb} {record['name']} ({record['fullhash']}) on backend {bid}")
    return 0


@node_command("unload", "stop a backend (by bid), or every backend running a model")
@click.argument("target")
def unload(client: NodeClient, as_json: bool, target: str) -> int:
    backends = client.backends()
    chosen = [b for b in backends if b["bid"] == target]
    if not chosen:
        running = [b for b in backends if b["model"]]
        models = [b["model"] for b in running]
        try:
            record = resolve_model(models, target)
        except NodeRefused:
            raise NodeRefused(f"no backend {target!r} and no loaded model {target!r} on the "
                              "node (see `aiserving status`)") from None
        chosen = [b for b in running if b["model"]["fullhash"] == record["fullhash"]]
    for b in chosen:
        client.terminate(b["bid"])
    if as_json:
        output.print_json([{"bid": b["bid"], "model": b["model"]["fullhash"] if b["model"] else ""}
                     for b in chosen])
    for b in chosen if not as_json else ():
        what = f" ({b['model']['name']} {b['model']['fullhash']})" if b["model"] else ""
        click.echo(f"unloaded backend {b['bid']}{what}")
    return 0


@node_command("status", "the node's version and resources, its backends, their processes "
              "and queue depth")
def status(client: NodeClient, as_json: bool) -> int:
    health = client.health()
    resources = client.resources()
    backends = client.backends()
    depths = client.queue_depths()
    for b in backends:
        b["switch"] = client.switch_state(b["bid"])
        b["queue"] = depths.get(b["model"]["fullhash"], 0) if b["model"] else 0
        b["state"] = _name(BackendState, b["status"].get("state"))
        b["processes"] = {k: _name(ProcStatus, v) for k, v in b["status"].items()
                          if k != "state"}
    if as_json:
        output.print_json({"node": client.url, "version": health.get("version"),
                     "compiled": health.get("compiled"), "resources": resources,
                     "backends": backends})
        return 0
    click.echo(f"node {client.url}  version {health.get('version')}  cpu {resources['cpu']}%  "
               f"memory {resources['mem']}%  gpu {resources['gpu']}  disk {resources['dsk']}%")
    if not backends:
        click.echo("no backends (`aiserving load MODEL` starts one)")
        return 0
    table = output.table("BID", "MODEL", "VERSION", "IMPL", "DEVICE", "STATE", "SWITCH",
                   "PROCESSES", "QUEUE")
    for b in sorted(backends, key=lambda b: _version_key(b["bid"])):
        model = b["model"] or {}
        switch = b["switch"].get("status", "")
        if b["switch"].get("error"):
            switch += f": {b['switch']['error']}"
        table.add_row(b["bid"], model.get("name", "-"), model.get("version", "-"), b["impl"],
                      b["device"] or "auto", b["state"], switch,
                      " ".join(f"{k}:{v}" for k, v in sorted(b["processes"].items())) or "-",
                      str(b["queue"]))
    output.out().print(table)
    return 0


@node_command("nodes", "the fleet: every live node sharing this node's redis, what it serves "
              "and how loaded it is")
def nodes(client: NodeClient, as_json: bool) -> int:
    fleet = client.nodes()
    if as_json:
        output.print_json(fleet)
        return 0
    if not fleet:
        click.echo("no live nodes in the registry")
        return 0
    table = output.table("NODE", "VERSION", "REST", "GRPC", "MODELS", "IN FLIGHT", "CPU", "MEMORY",
                   "LAST SEEN")
    now = time.time()
    for n in fleet:
        models = ", ".join(f"{m['name'] or m['fullhash']}:{m['version']} ({m['status']})"
                           for m in n.get("models") or ()) or "-"
        res = n.get("resources") or {}
        table.add_row(n["name"], str(n.get("version", "")), n.get("addresses", {}).get("rest", ""),
                      n.get("addresses", {}).get("grpc", ""), models,
                      str((n.get("load") or {}).get("in_flight", 0)),
                      f"{res['cpu']}%" if "cpu" in res else "-",
                      f"{res['mem']}%" if "mem" in res else "-",
                      f"{max(0.0, now - float(n.get('last_seen', now))):.0f} s ago")
    output.out().print(table)
    return 0


def _name(codes, code) -> str:
    """A legacy state code as a word ("running", "label error")."""
    try:
        return codes(code).name.lower().replace("_", " ")
    except ValueError:
        return str(code)


@node_command("infer", "run images through the loaded model (REST /detect) and print the "
              "results; the paths are read by the node, so they must exist on its machine")
@click.argument("images", nargs=-1, required=True)
@click.option("--bid", default="", help="backend to ask (default: the last one `load` started)")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=4, show_default=True,
              help="requests in flight at once")
def infer(client: NodeClient, as_json: bool, images: tuple, bid: str, jobs: int) -> int:
    from concurrent.futures import ThreadPoolExecutor

    paths = [os.path.abspath(p) for p in images]

    def ask(path: str) -> dict:
        try:
            answer = client.detect(path, bid, timeout=max(client.target.timeout, 90))
        except NodeUnreachable:
            raise
        except NodeRefused as exc:
            return {"image": path, "status": "failed", "message": exc.message}
        return {"image": path, "status": answer.get("status", "failed"),
                "result": answer.get("result"), "message": answer.get("message", "")}

    results: list[dict] = []
    progress, advance = output.progress("infer", len(paths), transfer=False)
    with progress, ThreadPoolExecutor(max_workers=min(jobs, len(paths))) as pool:
        for outcome in pool.map(ask, paths):
            results.append(outcome)
            advance(1)
    failed = [r for r in results if r["status"] != "success"]
    if as_json:
        output.print_json(results)
    elif len(results) == 1 and not failed:
        click.echo(json.dumps(results[0]["result"], indent=2))
    else:
        table = output.table("IMAGE", "STATUS", "RESULT")
        for r in results:
            shown = json.dumps(r["result"], separators=(",", ":")) if r["status"] == "success" \
                else r["message"]
            table.add_row(r["image"], r["status"], shown)
        output.out().print(table)
    if failed:
        output.error(f"{len(failed)} of {len(results)} images failed"
               + (f": {failed[0]['message']}" if len(failed) == 1 else ""))
        return 1
    return 0


@node_command("push", "store a bundle (folder or archive) on the node through the gRPC "
              "Exchange service (UploadBin in 2 MiB chunks, then ImportModelDistro)")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--version", "version", default="", help="store it as this version "
              "(default: the bundle's own)")
def push(client: NodeClient, as_json: bool, source: Path, version: str) -> int:
    from aiserving.bundle.archive import pack_export
    from aiserving.bundle.source import read_archive_record, read_bundle

    with tempfile.TemporaryDirectory(prefix="aiserving-push-") as tmp:
        if source.is_dir():
            record = read_bundle(source)
            archive = pack_export(source, record, Path(tmp) / f"{record.implhash}.tar.gz")
            info = record.to_dict()
        else:
            archive, info = source, read_archive_record(source)
        if version:
            info = {**info, "version": version}
        size = archive.stat().st_size
        checksum = sha256_of(archive)
        progress, advance = output.progress(f"push {info.get('name') or archive.name}", size)
        with progress:
            upload_id = client.upload(archive, advance)
        fullhash = client.import_model(info, upload_id)
    if as_json:
        output.print_json({"fullhash": fullhash, "name": info.get("name", ""), "bytes": size,
                     "sha256": checksum})
    else:
        click.echo(f"pushed {info.get('name') or source.name} as {fullhash} "
                   f"({size} bytes, sha256 {checksum})")
    return 0


@node_command("pull", "fetch a stored model (implhash, fullhash or name) as an archive "
              "through the gRPC Exchange service (ExportModelImage, then DownloadBin)")
@click.argument("model")
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="archive to write (default: <implhash>-<version>.tar.gz here)")
@click.option("--force", is_flag=True, help="replace an existing file")
def pull(client: NodeClient, as_json: bool, model: str, out: Path | None, force: bool) -> int:
    record = resolve_model(client.models(), model)
    out = out or Path(f"{record['fullhash']}.tar.gz")
    if out.exists() and not force:
        output.error(f"{out} exists; --force replaces it")
        return output.EXIT_USAGE
    name = client.export(record["implhash"], record["version"])
    progress, advance = output.progress(f"pull {record['name']}", None)
    with progress:
        checksum = client.download(name, out, advance)
    size = out.stat().st_size
    if as_json:
        output.print_json({"fullhash": record["fullhash"], "name": record["name"], "path": str(out),
                     "bytes": size, "sha256": checksum})
    else:
        click.echo(f"pulled {record['name']} ({record['fullhash']}) to {out} "
                   f"({size} bytes, sha256 {checksum}; every chunk's MD5 checked)")
    return 0


COMMANDS = (models, load, unload, status, infer, push, pull, nodes)
