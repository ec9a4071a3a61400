"""harness: launch, load, watch and compare LLM servers with tensor parallelism."""

__version__ = "0.1.0"
