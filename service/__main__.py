"""`python -m service <command>`: maintenance commands (see `python -m service --help`)."""

from service.history.cli import main

raise SystemExit(main())
