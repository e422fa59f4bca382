"""LoRA fine-tuning on a quantized base, as a library: the DVC stages in stages/ are thin recipes over it.

Nothing runs at import: every module only defines things.
"""
