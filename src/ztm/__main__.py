"""`python -m ztm ...`: the same as the `ztm` command."""

from ztm.cli.main import main

raise SystemExit(main())
