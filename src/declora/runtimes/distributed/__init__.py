"""The distributed runtime: one OS process per node, started by torchrun (the launcher), each
joining the process group, agreeing on the start and playing the rounds over point-to-point
torch.distributed (the worker and its transport)."""
