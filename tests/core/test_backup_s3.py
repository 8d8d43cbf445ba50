"""The repository on S3: a real S3-speaking server (moto in server mode) on 127.0.0.1,
reached through s3fs like any fsspec URL; an unreachable endpoint is a clear error."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import vmctl
from vmctl import DiskSpec, VMSpec
from vmctl.backup import BackupKind, open_repo, read_disk, write_disk

pytest.importorskip("s3fs", reason="s3fs is in the dev extra")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")

CS = 256 * 1024
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client(  # the operator makes the bucket; vmctl makes the repository in it
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="vmctl-test")
    try:
        yield url
    finally:
        server.stop()


def options(endpoint: str) -> dict[str, Any]:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "skip_instance_cache": True,
    }


def test_backup_and_restore_through_s3(hv: vmctl.Hypervisor, endpoint: str) -> None:
    repo = open_repo("s3://vmctl-test/repo", chunk_size=CS, storage_options=options(endpoint))
    assert repo.url == "s3://vmctl-test/repo"
    vm = hv.create_vm(VMSpec(name="s3vm", disks=[DiskSpec(size_mib=2)]))
    disk = vm.config().disks[0].id
    write_disk(vm, disk, 0, b"first generation" * 1000)
    first = vm.backup(repo)
    write_disk(vm, disk, MIB, b"second generation" * 1000)
    second = vm.backup(repo)
    assert second.kind is BackupKind.INCREMENTAL and second.read_bytes == CS
    again = open_repo("s3://vmctl-test/repo", storage_options=options(endpoint))
    assert [b.id for b in again.backups(vm)] == [first.id, second.id]
    assert again.verify().ok
    one = again.restore(first.id, hv, name="s3-gen1")
    two = again.restore(second.id, hv, name="s3-gen2")
    size = 2 * MIB
    assert read_disk(two, two.config().disks[0].id, 0, size) == read_disk(vm, disk, 0, size)
    assert read_disk(one, one.config().disks[0].id, MIB, 20) == bytes(20)
    result = again.prune(keep_last=1)
    assert result.removed == (first.id,)
    assert [b.id for b in again.backups()] == [second.id]
    assert again.verify().ok


def test_unreachable_endpoint_is_a_connection_error(hv: vmctl.Hypervisor) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    opts = options(dead)
    opts["config_kwargs"] = {"connect_timeout": 1, "retries": {"max_attempts": 1}}
    started = time.monotonic()
    with pytest.raises(vmctl.ConnectionError, match="cannot be reached"):
        open_repo("s3://vmctl-test/nowhere", storage_options=opts)
    assert time.monotonic() - started < 30
