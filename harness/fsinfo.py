"""Which filesystem a path lives on (I/O: ``/proc/self/mountinfo``), and whether it is a
network one.

The field guides' first advice for a model that loads slowly or "hangs" while loading: it sits
on a shared filesystem (NFS, Lustre, CIFS, a FUSE mount); copy it to local disk. An overlay
(a container's root) counts as network when one of its layers is.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

#: Filesystems that are not local disks.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "glusterfs",
        "beegfs",
        "gpfs",
        "9p",
        "afs",
        "davfs",
        "sshfs",
        "virtiofs",
    }
)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where, what type, from what, with which options."""

    mount_point: str
    fstype: str
    source: str
    super_options: str = ""


def is_network_fstype(fstype: str) -> bool:
    """NFS, Lustre, CIFS, ... and every FUSE filesystem (``fuse.sshfs``, ``fuse.s3fs``)."""
    base = fstype.lower()
    return base in NETWORK_FILESYSTEMS or base.startswith("fuse")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text (malformed lines are skipped)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(
            Mount(
                mount_point=_unescape(fields[4]),
                fstype=tail[0],
                source=_unescape(tail[1]),
                super_options=tail[2] if len(tail) > 2 else "",
            )
        )
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path`` (already absolute and resolved): the longest mount point that
    is a prefix of it; the last one mounted wins a tie."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        inside = path == point or path.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def _existing(path: str) -> str:
    """``path`` resolved, or its nearest existing parent (a destination not created yet)."""
    current = Path(path).expanduser().absolute()
    while not current.exists() and current.parent != current:
        current = current.parent
    return os.path.realpath(current)


def filesystem_of(path: str, mountinfo: str | None = None) -> tuple[Mount | None, str]:
    """The mount of ``path`` and its type as shown to users; an overlay whose layers are on a
    network filesystem reads ``overlay (on nfs4)``. Without ``mountinfo`` (this process's
    mounts), ``path`` is resolved first, or its nearest existing parent."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None, "?"
        path = _existing(path)
    mounts = parse_mountinfo(mountinfo)
    mount = mount_of(path, mounts)
    if mount is None:
        return None, "?"
    if mount.fstype == "overlay":
        for option in mount.super_options.split(","):
            key, _, value = option.partition("=")
            if key not in ("lowerdir", "upperdir"):
                continue
            for layer in value.split(":"):
                under = mount_of(layer, mounts) if layer.startswith("/") else None
                if under is not None and is_network_fstype(under.fstype):
                    return mount, f"overlay (on {under.fstype})"
    return mount, mount.fstype


def is_network_path(path: str, mountinfo: str | None = None) -> tuple[bool, str, str]:
    """``(network, fstype words, mount point)`` of where ``path`` is (or would be created)."""
    mount, words = filesystem_of(path, mountinfo)
    network = is_network_fstype(words.split()[0]) or "(on " in words
    return network, words, mount.mount_point if mount else "?"


def free_bytes(path: str) -> int | None:
    """Free space for this user where ``path`` is (or would be created)."""
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None
