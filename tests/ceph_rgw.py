"""A real S3 server for the tests: Ceph RGW on loopback (one monitor, one memstore OSD, radosgw).

Installed from Debian's packages when missing (as root), started in a temporary folder on
127.0.0.1 only, and stopped by pid. Ceph RGW enforces Object Lock itself, which moto does not,
and differs from AWS where the S3 driver must cope (it ignores `If-None-Match: *` on versioned
buckets and lock headers on multipart uploads).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGES = ["radosgw", "ceph-mon", "ceph-osd", "ceph-common"]
ACCESS_KEY = "registry-test"
SECRET_KEY = "registry-test-secret"


class CephUnavailableError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _installed() -> bool:
    return all(shutil.which(tool) for tool in ("radosgw", "ceph-mon", "ceph-osd"))


def ensure_installed() -> None:
    """Install the Ceph packages when radosgw is missing (needs root and Debian's mirror).
    Test workers in parallel take turns: apt refuses a second apt running at once."""
    if _installed():
        return
    if os.geteuid() != 0:
        raise CephUnavailableError("radosgw is not installed and installing it needs root")
    with open("/tmp/model-registry-ceph-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return  # another worker installed it while this one waited
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        ):
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise CephUnavailableError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")


@dataclass
class CephRGW:
    """One running cluster; `endpoint` speaks S3 with ACCESS_KEY / SECRET_KEY."""

    folder: Path
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client for this cluster (its own session: no cached credentials)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    @classmethod
    def start(cls, folder: Path, *, timeout: float = 90, frontend: str = "") -> CephRGW:
        """Start a cluster in `folder`; `frontend` adds options to radosgw's beast frontend
        (e.g. "tcp_nodelay=1": without it radosgw's Nagle and the client's delayed ACK hold
        the body of every small response about 40 ms)."""
        ensure_installed()
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("run", "log", "mon.a", "osd.0"):
            (folder / sub).mkdir(exist_ok=True)
        fsid = str(uuid.uuid4())
        mon_port, port = _free_port(), _free_port()
        conf = folder / "ceph.conf"
        conf.write_text(
            _CONFIG.format(
                fsid=fsid,
                mon_port=mon_port,
                port=port,
                folder=folder,
                frontend=f" {frontend}" if frontend else "",
            )
        )
        cluster = cls(folder, port)
        c = ["-c", str(conf)]
        try:
            cluster._run(
                [
                    "monmaptool",
                    "--create",
                    "--fsid",
                    fsid,
                    "--addv",
                    "a",
                    f"[v2:127.0.0.1:{mon_port}]",
                    str(folder / "monmap"),
                ]
            )
            cluster._run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(folder / "monmap")])
            cluster._run(["ceph-mon", *c, "-i", "a"])
            osd = str(uuid.uuid4())
            cluster._run(["ceph", *c, "osd", "new", osd])
            cluster._run(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd])
            cluster._run(["ceph-osd", *c, "-i", "0"])
            cluster._run(["radosgw", *c, "-n", "client.rgw.x"])
            cluster._run(
                [
                    "radosgw-admin",
                    *c,
                    "user",
                    "create",
                    "--uid=registry",
                    "--display-name=t",
                    f"--access-key={ACCESS_KEY}",
                    f"--secret-key={SECRET_KEY}",
                ]
            )
            cluster._wait(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise CephUnavailableError(
                f"{' '.join(command[:3])} failed ({result.returncode}): {result.stderr[-1500:]}"
            )

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.endpoint, timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise CephUnavailableError(f"radosgw did not answer on {self.endpoint} in {timeout} s")

    def stop(self) -> None:
        """Stop every daemon by its pid file: TERM, then KILL after five seconds."""
        pids = []
        for name in ("client.rgw.x", "osd.0", "mon.a"):
            pid_file = self.folder / "run" / f"{name}.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().strip() or 0)
                if pid:
                    pids.append(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


_CONFIG = """[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# Without crc client mode radosgw loops on get_initial_auth_request returned -13.
ms_mon_client_mode = crc
ms_client_mode = crc
mon_data_avail_warn = 1
mon_data_avail_crit = 0
run_dir = {folder}/run
admin_socket = {folder}/run/$name.asok
log_file = {folder}/log/$name.log
pid_file = {folder}/run/$name.pid
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
[mon]
mon_data = {folder}/mon.$id
mon_initial_members = a
[osd]
osd_data = {folder}/osd.$id
osd_objectstore = memstore
memstore_device_bytes = 2147483648
osd_memory_target = 1073741824
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
[client.rgw.x]
rgw_frontends = beast endpoint=127.0.0.1:{port}{frontend}
rgw_dns_name = localhost
rgw_thread_pool_size = 32
"""
