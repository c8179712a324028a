"""The agent's web GUI: a single-page app served from package data at `/gui/`, and its sign-in.

`auth` owns one-time sign-in codes and browser sessions (pure logic), `web` the aiohttp routes that serve the app and
turn a code into an HttpOnly session cookie, `links` the sign-in paths and links (stdlib only), `cli` the `ztm gui`
command that prints a sign-in link.
"""
