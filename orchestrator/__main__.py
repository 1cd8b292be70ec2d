"""`python -m orchestrator` is the same as the `progan` command."""

from orchestrator.cli import main

raise SystemExit(main())
