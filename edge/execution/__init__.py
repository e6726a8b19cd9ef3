"""medge.edge.execution."""
