"""Harnesses that check lcow from the outside: the hostile tar corpus, the crash (SIGKILL)
harness, the load harness and the tar-scanner differential.

They are not part of the shipped package: ``tests/hardening`` runs them at CI size, ``tools/``
and ``benchmarks/`` at campaign size (those scripts put the repository root on ``sys.path``).
Worker processes are started as ``python -m tests.harness.…`` with the repository root on
``PYTHONPATH`` (:mod:`tests.harness.spawn`); lcow itself comes from the environment.
"""
