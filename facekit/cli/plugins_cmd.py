"""``facekit plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from facekit.cli.output import console
from facekit.text import rich_safe


def plugins(
    all_: bool = typer.Option(False, "--all", help="Include facekit's built-in plugins."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List installed plugins: package, version and what each registers."""
    from facekit.plugins import get_plugins

    infos = [p for p in get_plugins().plugins if all_ or not p.builtin]
    rows = [info.to_dict() for info in infos]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("No third-party plugins installed (`facekit plugins --all` shows the built-ins).")
        return
    table = Table("plugin", "package", "version", "registers")
    for row in rows:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items())
        if "register_commands" in row["hooks"]:
            registers = "; ".join(filter(None, [registers, "commands"]))
        table.add_row(*map(rich_safe, (row["name"], row["package"] + (" (built-in)" if row["builtin"] else ""), row["version"], registers)))
    console.print(table)
