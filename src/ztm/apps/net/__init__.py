"""The built-in `net` app: network mode (issue 17). With `ztm run agent --tun` every joined mesh gets a TUN interface
(`ztm0`, `ztm1`, ...) carrying this endpoint's mesh addresses; IP packets to other endpoints' addresses (and, with
`--accept-routes`, to the subnets they route) travel as `ip` streams of this app, sealed end to end, direct first.

Modules: `options` (the agent's network options), `frames` (the `ip` stream's framing and batching, sans-IO), `tun`
(the TUN device: ioctls, offloads, addresses and routes), `snat` (a subnet router's forwarding and masquerade),
`sender` (one bounded sender per peer), `app` (`NetApp`: the whole, and its view).
"""
