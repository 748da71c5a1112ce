"""What a training run prints: a short summary of the run instead of the full config and Lightning's start-up
chatter (the full config is RUN/config.yaml; `verbose=true` prints everything as before)."""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

# Lightning's INFO lines that say nothing about this run, or advertise; matched at the start of the message.
CHATTER = ("GPU available", "TPU available", "HPU available", "💡 Tip", "`Trainer(limit_val_batches",
           "`weights_only` was not set", "Seed set to", "LOCAL_RANK", "`Trainer.fit` stopped")
# Warnings that are Lightning's or torch's business, not the user's: matched anywhere in the message.
NOISE = ("The `srun` command is available on your system but is not used", "isinstance(treespec, LeafSpec)")
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")


class DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(CHATTER)


def quiet(verbose: bool) -> None:
    """Unless `verbose`: drop Lightning's start-up chatter and the warnings in NOISE (idempotent)."""
    if verbose:
        return
    chatter = DropChatter()
    for name in LIGHTNING_LOGGERS:
        for logger in (logging.getLogger(name), *(logging.getLogger(n) for n in logging.root.manager.loggerDict
                                                  if n.startswith(name + "."))):
            if not any(isinstance(f, DropChatter) for f in logger.filters):
                logger.addFilter(chatter)
    for message in NOISE:
        warnings.filterwarnings("ignore", message=f".*{re.escape(message)}")


def note(message: str) -> None:
    """One line the user should read (a substitution or an omission the run makes on its own), on stderr, from the
    first process only: unlike a Python warning it is not hidden by PYTHONWARNINGS or repeated per process."""
    if all(os.environ.get(k, "0") in ("0", "") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")):
        print(f"note: {message}", file=sys.stderr, flush=True)
