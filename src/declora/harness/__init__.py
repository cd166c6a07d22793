"""One run of one config, the same under both runtimes: the session (graph, data, model and
the party of nodes for each method), the rounds with evaluation and checkpoints, and the run's
records, summary and output files."""
