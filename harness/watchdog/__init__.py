"""The hang watchdog: detection rules (pure) and capture (I/O) into incident bundles.

* :mod:`harness.watchdog.rules` — pure functions and small trackers over observations
  (process samples, metrics, canary probes, output activity) that return :class:`Verdict` s.
* :mod:`harness.watchdog.stacks` — pure parsing of ``py-spy dump`` text: where a process waits.
* :mod:`harness.watchdog.summary` — pure: the odd process out and the text of ``summary.md``.
* :mod:`harness.watchdog.redact` — pure: secrets never reach a bundle.
* :mod:`harness.watchdog.capture` — I/O: py-spy, /proc via psutil, logs, NVML -> a bundle.
* :mod:`harness.watchdog.monitor` — I/O: the watcher ``harness serve`` runs.
* :mod:`harness.watchdog.command` — I/O: ``harness watch -- COMMAND``.
* :mod:`harness.watchdog.remote` — ``harness dump --hosts/--slurm-job`` across nodes.
"""
