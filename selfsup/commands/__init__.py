"""What each entry point runs (train.py, eval.py, embed.py, export.py): the steps of a command, above the
assembly layer."""
