"""The tunnel app: TCP and UDP port forwarding between endpoints, relayed through the hub."""
