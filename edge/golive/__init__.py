"""medge.edge.golive."""
