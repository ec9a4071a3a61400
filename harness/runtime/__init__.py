"""Runtimes start a LaunchSpec: ``local`` (a process group) and ``docker`` (a container)."""
