"""Loading and running a transformers model in this process: weights, quantisation, adapters."""
