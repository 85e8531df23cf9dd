#!/usr/bin/env bash
# SmolLM2-135M-Instruct writing common words misspelt by fixed rules (fone, nashun, beleive, litle, coud):
# the advice "fine-tune the output head + early layers with noisy data" against other sites.
# Writes report/ next to this file. `surgeon map` runs the same arms from task.json's "map" entry.
set -euo pipefail
cd "$(dirname "$0")"
export SURGEON_THREADS="${SURGEON_THREADS:-2}"
MODEL="$(surgeon fixture smollm2)"

python build_task.py
surgeon compare task.json --model "$MODEL" --out report --overwrite \
  --arm none \
  --arm "head_early=lora layers=0-6 roles=attn+mlp+lm_head" \
  --arm "lora_late=lora layers=23-29 roles=attn+mlp" \
  --arm "lora=lora roles=attn+mlp" \
  --arm "full_down=full roles=mlp.down"
