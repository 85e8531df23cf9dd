#!/usr/bin/env bash
# SmolLM2-135M-Instruct writing archaic English (thou art, thy, thee, he hath, she knoweth, oft):
# the advice "adapters on late layers" against early and middle layers and a full fine-tune of mlp.down.
# Writes report/ next to this file. `surgeon map` runs the same arms from task.json's "map" entry.
set -euo pipefail
cd "$(dirname "$0")"
export SURGEON_THREADS="${SURGEON_THREADS:-2}"
MODEL="$(surgeon fixture smollm2)"

python build_task.py
surgeon compare task.json --model "$MODEL" --out report --overwrite \
  --arm none \
  --arm "lora_late=lora layers=23-29 roles=attn+mlp" \
  --arm "lora_early=lora layers=0-6 roles=attn+mlp" \
  --arm "lora_mid=lora layers=12-18 roles=attn+mlp" \
  --arm "full_down=full roles=mlp.down"
