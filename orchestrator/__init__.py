"""Ray-distributed experiment orchestrator for mask / gender / age classification."""
__version__ = "0.1.0"
