"""``python -m advprompts``: the CLI, so that launchers can start it as a module
(``accelerate launch -m advprompts generate ...``)."""

from advprompts.cli.app import main

main()
