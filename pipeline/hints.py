"""Hints our transforms give a runner, as Beam annotations: a runner that does not know one ignores it."""

from contextlib import AbstractContextManager

import apache_beam as beam

# On a grouping (or a transform that contains one): its records are few and small, whatever the input's size (spill
# file paths, per-key counts), so a runner may bring them together in one task instead of a many-task shuffle.
SMALL_GROUPING = "wit_small_grouping"


def small_grouping(pipeline: beam.Pipeline) -> AbstractContextManager:
    """Marks the groupings applied inside this `with` block as small (SMALL_GROUPING)."""
    return pipeline.transform_annotations(**{SMALL_GROUPING: "yes"})
