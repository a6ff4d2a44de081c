"""Candidates -> samples: polite, safe HTTP fetching and image processing."""
