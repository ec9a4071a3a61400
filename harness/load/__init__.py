"""The load generator: workloads and arrivals (pure), SSE parsing (pure), the async client and
the runner (I/O). Entry point for other code: :func:`harness.load.runner.run_load`."""
