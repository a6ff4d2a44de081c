"""Thin entry points (`run(argv)`) that wire pipeline stages into Beam jobs; unknown args go to PipelineOptions."""
