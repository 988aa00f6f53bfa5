"""What every node command shares: the node options, the node to talk to, and output.

Tables for people (rich), `--json` for scripts, and on failure one line on stderr
(`error: ...`) with the exit status the commands' docstring lists.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from aiserving.cli.client import ClientError, NodeClient, Target, local_address
from aiserving.errors import AiservingError, ConfigError

EXIT_USAGE = 2
CONTEXT = {"help_option_names": ["-h", "--help"]}



def node_command(name: str, help_text: str):
    """A click command taking the node options; runs with a NodeClient, turns errors into
    one stderr line and an exit status."""
    def wrap(function):
        @click.command(name, help=help_text, context_settings=CONTEXT)
        @click.option("--node", "node_url", metavar="URL",
                      help="the node's REST address (default: http://127.0.0.1:<http.port> "
                      "of the local settings; https when they set tls.cert)")
        @click.option("--grpc", "grpc_address", metavar="HOST:PORT",
                      help="the node's gRPC address (default: the local settings' grpc.address, "
                      "or the --node host with port 50051)")
        @click.option("--token", envvar="AISRV_TOKEN", show_envvar=True, default="",
                      help="bearer token (the node's auth.token, or auth.admin_token for load, "
                      "unload, push and pull); the local node's own token when no --node is given")
        @click.option("--cacert", metavar="PEM", help="CA (or the node's certificate) to trust "
                      "for TLS (default: the local settings' tls.cert when they set one)")
        @click.option("--cert", metavar="PEM", help="client certificate for a gRPC door that "
                      "asks for one (tls.client_ca)")
        @click.option("--key", metavar="PEM", help="private key of --cert")
        @click.option("--timeout", type=float, default=30.0, show_default=True,
                      help="seconds to wait for each answer")
        @click.option("--settings", default=None,
                      help="settings.py the local defaults come from (default: AISRV_SETTINGS)")
        @click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
        @functools.wraps(function)
        def command(node_url, grpc_address, token, cacert, cert, key, timeout, settings,
                    as_json, **options):
            ctx = click.get_current_context()
            settings = settings or (ctx.obj or {}).get("default_settings")
            try:
                target = target_of(node_url, grpc_address, token, cacert, cert, key, timeout,
                                 settings)
                with NodeClient(target) as client:
                    code = function(client, as_json=as_json, **options)
            except ConfigError as exc:
                error(exc.message)
                ctx.exit(EXIT_USAGE)
            except ClientError as exc:
                error(exc.message)
                ctx.exit(exc.exit_code)
            except AiservingError as exc:  # a local bundle or file the command cannot use
                error(exc.message)
                ctx.exit(EXIT_USAGE)
            ctx.exit(code or 0)
        return command
    return wrap


def target_of(node_url, grpc_address, token, cacert, cert, key, timeout, settings_path) -> Target:
    local = None

    def settings():
        nonlocal local
        if local is None:
            from aiserving.config import Settings

            local = Settings.load(settings_path)
        return local

    if node_url:
        url = node_url if "://" in node_url else f"http://{node_url}"
    else:
        url = settings().local_rest_url
        if url.startswith("https://127.0.0.1:"):
            # the name a node's own certificate most likely carries
            url = url.replace("127.0.0.1", "localhost", 1)
    if grpc_address:
        address = grpc_address
    elif node_url:
        from urllib.parse import urlsplit

        host = urlsplit(url).hostname or "127.0.0.1"
        address = f"{host if ':' not in host else f'[{host}]'}:50051"  # the legacy port
    else:
        address = local_address(settings()["grpc.address"])
        if url.startswith("https:") and address.startswith("127.0.0.1:"):
            address = "localhost:" + address.split(":", 1)[1]
    is_local = not node_url and not grpc_address
    if not token and is_local:
        # On the device itself the operator reads settings.py anyway; never sent elsewhere.
        token = settings()["auth.admin_token"] or settings()["auth.token"]
    if not cacert and is_local and url.startswith("https:"):
        cacert = settings()["tls.cert"] or None
    return Target(url=url, grpc=address, token=token, cacert=cacert, cert=cert, key=key,
                  timeout=timeout)


def error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def out():
    from rich.console import Console

    # A pipe or a file gets no colours, and lines wide enough that hashes never wrap.
    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)


def err():
    from rich.console import Console

    return Console(stderr=True)


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def table(*columns: str):
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def progress(description: str, total: int | None, transfer: bool = True):
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                               TextColumn, TimeRemainingColumn, TransferSpeedColumn)

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += ([DownloadColumn(), TransferSpeedColumn()] if transfer else [MofNCompleteColumn()])
    columns.append(TimeRemainingColumn())
    progress = Progress(*columns, console=err(), transient=False,
                        disable=not sys.stderr.isatty())
    task = progress.add_task(description, total=total)
    return progress, (lambda n: progress.advance(task, n))
