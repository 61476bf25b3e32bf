"""Everything that creates files in the output: the staging folder and its safety (folder.py),
shard files (shards.py), the resume journal (journal.py), config/tokenizer/index files (files.py)
and the model card (card.py)."""
