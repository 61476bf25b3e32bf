"""LoRA adapters as whole tools: applying adapters to a base (merge.py) and extracting one from a
fine-tune. Reading an adapter while merging is checkpoints/adapter.py's."""
