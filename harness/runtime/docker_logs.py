"""``python -m harness.runtime.docker_logs``: the background log follower of a detached
container run (started by :meth:`harness.runtime.docker.DockerHandle.detach`).

It appends the container's output to ``<run dir>/server.log`` from where the follower of the
harness process that started the container stopped, and exits when the container stops or is
removed. The work is done in :func:`harness.runtime.docker.follow_container_log` (the only
module importing docker).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.runtime.docker import follow_container_log


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments :func:`~harness.runtime.docker.spawn_log_follower` passes and
    follow; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m harness.runtime.docker_logs")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--since", type=int, default=0, help="whole second to resume from")
    parser.add_argument("--skip", type=int, default=0, help="messages from --since on to drop")
    args = parser.parse_args(argv)
    return follow_container_log(args.run_dir, args.container, args.since, args.skip)


if __name__ == "__main__":
    raise SystemExit(main())
