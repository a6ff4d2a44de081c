"""Beam stages of the data flow, one module per stage, each a composite PTransform over pure functions."""
