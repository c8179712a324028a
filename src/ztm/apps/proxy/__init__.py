"""The proxy app: a SOCKS5 and HTTP proxy entrance on one endpoint, exits on others that connect for it."""
