"""The simulated engine: an OpenAI-compatible server with configurable speed and injected,
TP-shaped faults (``harness sim``). Also a plan engine (``--engine sim``)."""
