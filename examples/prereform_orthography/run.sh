#!/usr/bin/env bash
# Gemma-3-270M writing pre-1918 Russian orthography: locate, then edit vs fine-tune side by side.
# Takes about an hour on 2 CPU cores (six arms; each LoRA arm trains 40 steps of 8 examples).
# Writes locate.png / locate.json and report/ (report.md, report.json, report.png) next to this file.
set -euo pipefail
cd "$(dirname "$0")"
export SURGEON_THREADS="${SURGEON_THREADS:-2}"
MODEL="$(surgeon fixture gemma3)"

python build_task.py
surgeon locate task.json --model "$MODEL" --out locate.png --examples 8
surgeon compare task.json --model "$MODEL" --out report --overwrite \
  --arm none \
  --arm "tokens=edit:tokens_arm.py words=400 boost=0.1" \
  --arm "lora_0_6=lora layers=0-6 roles=attn+mlp" \
  --arm "lora_11_17=lora layers=11-17 roles=attn+mlp" \
  --arm "lora_all=lora layers=all roles=attn+mlp" \
  --arm "lm_head=lora roles=lm_head"
# locate suggests 11-17 here (see README), the same layers as lora_11_17; on another model add
#   --arm "lora_located=lora layers=auto:locate.json roles=attn+mlp"
