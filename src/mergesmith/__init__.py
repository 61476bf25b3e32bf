"""mergesmith: build new language models out of existing ones, from mergekit-compatible recipes.

The pipeline, one module or folder a stage:
recipe/ (YAML -> Recipe) -> checkpoints/ (model references, headers, lazy tensors)
-> plan.py (Recipe + checkpoints -> Plan) -> execute.py (Plan -> tensors) -> write.py (files).
"""

__version__ = "0.1.0"
