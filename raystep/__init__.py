"""raystep: Step-DPO end to end on Ray."""

__version__ = "0.1.0"
