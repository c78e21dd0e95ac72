"""Training machinery behind ``perception.train``'s one loop.

- ``engines``: the step engines (plain / DDP, DeepSpeed ZeRO) behind one small interface.
- ``deepspeed_config``: reading and checking a DeepSpeed JSON config (no DeepSpeed needed).
- ``checkpoints``: the run folder's ``checkpoint-STEP`` folders and its ``latest`` pointer.
"""
