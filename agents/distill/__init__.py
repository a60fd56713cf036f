"""Distillation: recorded and gold runs -> chat JSONL -> a LoRA adapter; the generated task suite."""
