"""The ``advprompts`` typer app: registers commands by module path and maps errors to exit 2.

Command modules import only typer at module level, so ``advprompts --help`` stays fast; to add a
command, append ``(name, "module.path")`` to :data:`COMMANDS` (the module defines ``main``).
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from advprompts.cli._errors import handle_errors, set_debug


#: (command name, module defining ``main``); extended by the lead (data, zoo, demo, experiment).
COMMANDS: list[tuple[str, str]] = [
    ("optimize", "advprompts.cli.commands.optimize"),
    ("generate", "advprompts.cli.commands.generate"),
    ("presets", "advprompts.cli.commands.presets"),
    ("zoo", "advprompts.cli.commands.zoo"),
    ("data", "advprompts.cli.commands.data"),
    ("experiment", "advprompts.cli.commands.experiment"),
    ("loop", "advprompts.cli.commands.loop"),
    ("demo", "advprompts.cli.commands.demo"),
    ("benchmark", "advprompts.cli.commands.benchmark"),
]


def _print_version(value: bool) -> None:
    if value:  # eager: runs before the command is looked up, so `advprompts --version` needs none
        from advprompts import __version__

        typer.echo(f"advprompts {__version__}")
        raise typer.Exit()


def build_app(commands: list[tuple[str, str]] | None = None) -> typer.Typer:
    app = typer.Typer(help="Controlled training data generation with diffusion models (AP / GP / GAP).",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
              verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress (INFO)."),
              version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit.")):
        set_debug(debug)
        logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")

    for name, module in commands or COMMANDS:
        mod = importlib.import_module(module)
        if isinstance(getattr(mod, "app", None), typer.Typer):  # a command group
            app.add_typer(mod.app, name=name)
            continue
        app.command(name, help=mod.__doc__.strip().splitlines()[0] if mod.__doc__ else None)(handle_errors(mod.main))
    return app


app = build_app()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="advprompts")


if __name__ == "__main__":
    sys.exit(main())
