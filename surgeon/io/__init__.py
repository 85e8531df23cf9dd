"""Reading and writing checkpoints: headers, tensors, staged changes, atomic output.

checkpoint  Checkpoint: config + safetensors headers; tensors read on demand; staged edits
shards      byte-level safetensors header parsing, validation, streamed reads and writes
save        write a checkpoint: hard-link untouched shards, patch changed byte ranges, manifest
diff        per-tensor ‖ΔW‖, relative change and effective rank between two checkpoints

Nothing here imports edits, the runtime, study, export or the CLI.
"""

from surgeon.io.checkpoint import Checkpoint, open_checkpoint

__all__ = ["Checkpoint", "open_checkpoint"]
