"""DailyDialog data preparation, LoRA fine-tuning and evaluation (filled in by the training work)."""
