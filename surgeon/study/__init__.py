"""Measuring what an edit or a fine-tune did, side by side.

task       task files: train / probes / neutral text (docs/tasks.md)
measure    efficacy, generalisation, specificity, KL, perplexity, spelling rate
finetune   the baseline: LoRA (peft) or full fine-tuning of a layers × roles slice
compare    arms side by side → report.json / report.md / report.png
locate     gradient attribution + causal tracing → a layers × roles heatmap
spelling   rule sets (pre-1918 Russian, British English) that score free text
"""
