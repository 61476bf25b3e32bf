"""mergesmith: build new language models out of existing ones, from mergekit-compatible recipes.

The pipeline, one module or folder a stage:
recipe/ (YAML -> Recipe) -> checkpoints/ (model references, headers, lazy tensors)
-> plan.py (Recipe + checkpoints -> Plan: every output tensor with its route)
-> execute/ (Plan -> one task per shard, run by a backend: local threads or Ray)
-> output/ (staging folder, shards, journal, config/tokenizer/card files).
api.py strings them together: recipe -> plan -> execute -> write.
"""

__version__ = "0.1.0"
