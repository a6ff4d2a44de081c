"""The dataset statistics report (`wit stats`): Beam combiners over a dataset, stats.json, and the HTML page."""
