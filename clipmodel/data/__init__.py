"""The training data loader: curated shards streamed through small stages into batches of images and tokens."""
