"""The terminal app: remote shells (on a PTY) and remote commands (without one) on endpoints of the mesh."""
