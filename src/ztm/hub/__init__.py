"""The hub: a mesh's certificate authority, endpoint registry and relay (`ztm run hub`)."""
