"""Which filesystem a path is on, from a mountinfo text."""

from __future__ import annotations

from harness.fsinfo import filesystem_of, is_network_fstype, is_network_path, parse_mountinfo

MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /data rw,relatime shared:20 - nfs4 fs1:/export/data rw,vers=4.2
41 22 0:46 / /data/local rw,relatime - xfs /dev/sdb rw
42 22 0:47 / /mnt/s3 rw - fuse.s3fs s3fs rw
43 22 0:48 / /scratch rw - lustre 10.0.0.1@tcp:/fs rw
44 22 0:49 / /ctr rw - overlay overlay rw,lowerdir=/data/layers/l1:/data/layers/l2,upperdir=/var/up,workdir=/var/w
45 22 0:50 / /with\\040space rw - cifs //srv/share rw
"""


def test_parse_and_longest_prefix() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert len(mounts) == 7 and mounts[6].mount_point == "/with space"
    assert filesystem_of("/data/models/qwen", MOUNTINFO)[1] == "nfs4"
    assert filesystem_of("/data/local/qwen", MOUNTINFO)[1] == "xfs"
    assert (
        filesystem_of("/database", MOUNTINFO)[1] == "ext4"
    )  # a prefix of the name is not a parent


def test_network_filesystems() -> None:
    assert is_network_path("/data/models", MOUNTINFO)[0]
    assert is_network_path("/mnt/s3/m", MOUNTINFO)[0]
    assert is_network_path("/scratch/m", MOUNTINFO)[0]
    assert is_network_path("/with space/m", MOUNTINFO)[0]
    assert not is_network_path("/home/me", MOUNTINFO)[0]
    # An overlay whose layers sit on NFS is a network filesystem too.
    network, words, _ = is_network_path("/ctr/models", MOUNTINFO)
    assert network and words == "overlay (on nfs4)"
    assert is_network_fstype("fuse.juicefs") and not is_network_fstype("tmpfs")
