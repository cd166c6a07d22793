"""How bytes move: the simulator (every node in one process, :mod:`~declora.runtimes.sim`) and
the distributed runtime (one torchrun process per node, :mod:`~declora.runtimes.distributed`). They
never import each other."""
