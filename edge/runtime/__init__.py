"""medge.edge.runtime."""
