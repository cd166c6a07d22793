"""declora: decentralized LoRA fine-tuning (Dec-LoRA) without a central server."""

__version__ = "0.1.0"
