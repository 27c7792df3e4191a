"""Opt-in machine tuning, in one place: the caller turns it on, the library never does it behind its back.

``machine`` reads facts about the CPU and its memory (torch-free, shared with ``gpt2reg.ort``);
``kernels`` picks the fastest linear kernel per layer shape; ``hugepages`` moves weights into 2 MiB
pages; ``device`` resolves training/eval devices and precisions.
"""
