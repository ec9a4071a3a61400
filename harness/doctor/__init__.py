"""``harness doctor``: pre-flight checks where the server will run.

:mod:`~harness.doctor.probe` and :mod:`~harness.doctor.sanity` are standalone scripts (standard
library, plus torch for the sanity test) that run here or inside a container made from the
plan; :mod:`~harness.doctor.checks` judges what they found (pure); :mod:`~harness.doctor.run`
runs them.
"""
