"""What every layer shares: network namespaces (more to come: state files, supervised children)."""
