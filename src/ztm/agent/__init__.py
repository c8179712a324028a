"""The agent: joins meshes as an endpoint, keeps one HTTP/2 link per hub, serves the local API (`ztm run agent`)."""
