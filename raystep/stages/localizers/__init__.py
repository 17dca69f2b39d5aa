"""localizers."""
