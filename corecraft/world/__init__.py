"""The CoreCraft world: a seeded SQLite enterprise of a PC-components retailer, forked per episode.

    from corecraft.world import World
    world = World.build(seed=0)          # deterministic: same seed, same bytes (World.open(path) for a file)
    with world.fork() as fork:           # private writable copy for one episode, ~0.5 ms
        fork.conn.execute("SELECT ...")  # foreign_keys=ON, sqlite3.Row rows, usable from any thread
        fork.changes()                   # what the episode inserted/updated/deleted, per table

Modules: ``schema`` (the DDL and a data-model overview: read it first), ``world`` (World, Fork),
``generate`` + ``generator`` + ``sections`` (the seeded generator), ``data`` (the files under worlds/corecraft),
``compat`` (build rules), ``warranty`` (coverage rule), ``diff`` (changes between two databases), ``cli``.
"""

from corecraft.world.world import Fork, ForkPool, World, WorldError

__all__ = ["Fork", "ForkPool", "World", "WorldError"]
