"""Evaluation of a model: zero-shot reports, retrieval Recall@K, linear probe, labelled shard sets."""
