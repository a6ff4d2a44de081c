"""Embeddings of a dataset: the encoder behind `wit encode`, the embeddings folder, reference prompts, search."""
