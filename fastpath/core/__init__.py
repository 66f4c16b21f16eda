"""What every layer shares: network namespaces, paths, atomic JSON state, the port parser,
the --watch loop, and supervised children that report as JSON lines (child.py)."""
