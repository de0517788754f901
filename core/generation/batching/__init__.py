"""Decoding many conversations' requests together: the scheduler and its KV-cache batches."""
