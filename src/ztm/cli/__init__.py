"""The `ztm` command line: a thin, fast client of the agent's local API and the process manager of hub and agent.

`main.py` is the entry point, `registry.py` the command table, `args.py` the parsers, `client.py` the API client,
`commands.py` / `daemons.py` / `local.py` the commands, `output.py` the formatting, `settings.py` the saved defaults.
Heavy modules (asyncio, aiohttp, cryptography, h2) are imported only by the commands that run a hub or an agent.
"""
