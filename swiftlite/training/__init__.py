"""The pieces of `mm sft` (swiftlite/sft.py reads top to bottom and uses these).

flags.py: the flags, typed and grouped by concern; dataset.py: rows -> encoded samples and batches; lora.py: LoRA
targets and freezing; trainer.py: the transformers Trainer (public extension points only) with atomic checkpoints
and logging.jsonl; launch.py: output directories, torchrun relaunch, DeepSpeed configs; plots.py: loss curves.
"""
