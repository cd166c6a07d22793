"""The maths of decentralized training, as pure functions on numpy arrays and adapter tensors:
graphs and mixing matrices, partitions, message compression, consensus rules, faults, the
methods as values and the scores. Nothing here touches a device, a process group or a file."""
