"""What one node learns with: data sources and datasets, the tasks (classification, causal
LM), the model with its LoRA adapter, devices and precision, size checks, the local training
steps (batched too) and DP-SGD with its accounting."""
