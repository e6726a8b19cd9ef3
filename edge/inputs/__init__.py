"""medge.edge.inputs."""
