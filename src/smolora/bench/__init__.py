"""`smolora bench`: SmoLoRA against the peer scripts, one process after another."""
