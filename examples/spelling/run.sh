#!/usr/bin/env bash
# SmolLM2-135M-Instruct switching from American to British spelling: locate, then edit vs fine-tune.
# Takes about half an hour on 2 CPU cores. Writes locate.png / locate.json and report/ next to this file.
set -euo pipefail
cd "$(dirname "$0")"
export SURGEON_THREADS="${SURGEON_THREADS:-2}"
MODEL="$(surgeon fixture smollm2)"

python build_task.py
surgeon locate task.json --model "$MODEL" --out locate.png --examples 8
surgeon compare task.json --model "$MODEL" --out report --overwrite \
  --arm none \
  --arm "tokens=edit:../prereform_orthography/tokens_arm.py rules=en_gb words=400 boost=0.1" \
  --arm "lora_0_6=lora layers=0-6 roles=attn+mlp" \
  --arm "lora_23_29=lora layers=23-29 roles=attn+mlp" \
  --arm "lora_all=lora layers=all roles=attn+mlp" \
  --arm "lora_located=lora layers=auto:locate.json roles=attn+mlp" \
  --arm "lm_head=lora roles=lm_head"
