"""How bytes move: the simulator (every node in one process, :mod:`~declora.runtimes.sim`) and
the distributed runtime (one torchrun process per node, :mod:`~declora.runtimes.dist`). They
never import each other."""
