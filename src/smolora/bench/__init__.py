"""`smolora bench`: SmoLoRA's training speed and memory, one process after another.

From a checkout, the peer scripts' too (benchmarks/run_peers.py).
"""
