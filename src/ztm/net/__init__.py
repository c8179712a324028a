"""Network mode's pure parts (issue 17): no I/O, no asyncio. `dns`: the mesh's DNS answers."""
