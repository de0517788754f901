"""DailyDialog data preparation, LoRA fine-tuning and evaluation."""
