"""Curation: text rules and language ID (and, as they land, duplicates and query balancing)."""
