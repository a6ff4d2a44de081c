"""Curation with embeddings (`wit filter`): CLIP score, semantic dedup, unwanted concepts, eval decontamination."""
