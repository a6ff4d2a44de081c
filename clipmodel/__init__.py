"""The CLIP model family, tokenizer, loss, trainer, loader, encoder and evaluation; never imports Beam."""
