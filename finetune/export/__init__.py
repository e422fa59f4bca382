"""GGUF export for llama.cpp / Ollama: the converter (setup and call), reading files back, the Modelfile."""
