"""Carrying an edit to where models run.

adapter         an edit as a PEFT LoRA adapter (exact for rank-one updates up to storage rounding)
llama_cpp       llama.cpp, the tool: where its converters come from, llama-cpp-python in Python
gguf            checkpoint → GGUF with llama.cpp's own converter, refused first where llama.cpp has no slot
verify          the GGUF in llama.cpp against the checkpoint in transformers: greedy tokens, top-1 agreement
control_vector  a steering direction as llama.cpp's control-vector GGUF (direction.N = surgeon's layers.N)
lora_gguf       a PEFT adapter as llama.cpp's LoRA GGUF, plus an Ollama Modelfile
"""
