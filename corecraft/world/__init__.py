"""The CoreCraft world: a seeded SQLite enterprise of a PC-components retailer, forked per episode.

    from corecraft.world import World
    world = World.build(seed=0)          # deterministic: same seed, same bytes
    with world.fork() as fork:           # private writable copy for one episode
        fork.conn.execute("SELECT ...")

The schema (tables, columns, conventions) is documented in ``corecraft.world.schema``.
"""

from corecraft.world.world import Fork, World, WorldError

__all__ = ["Fork", "World", "WorldError"]
