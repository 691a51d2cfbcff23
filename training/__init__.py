"""Intent classifiers: data, fine-tuning (full or LoRA), evaluation and inference (no Django)."""
