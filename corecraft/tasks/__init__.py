"""Tasks: the data model, scenario families that plant situations into the world, oracles."""
