"""Shared fixtures: a real Docker engine, a tiny local busybox image, and a
private redis-server (``redis_server``, see tests/redisserver.py).

``docker_client`` skips the test when no engine answers, except under
``CI=true``, where it fails: CI installs and starts the engine, so an
unreachable one there is a broken setup, not a reason to go green.

``busybox_image`` builds ``p2pnode-busybox:latest`` locally when it is missing
(no registry is reachable): Debian's ``busybox-static`` package is downloaded
with ``apt-get download``, unpacked with ``dpkg-deb -x``, turned into a rootfs
with ``bin/busybox`` plus one symlink per applet, and imported as an image.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.redisserver import RedisServer, RedisUnavailable, start_redis

BUSYBOX_IMAGE = "p2pnode-busybox:latest"

# Used when `busybox --list` cannot run on this host (it normally can: static).
_FALLBACK_APPLETS = (
    *("sh", "ash", "echo", "cat", "sleep", "ls", "wc", "tr", "head", "tail", "env"),
    *("true", "false", "yes", "dd", "mkdir", "touch", "rm", "cp", "mv", "ln", "chmod"),
    *("id", "wget", "nc", "ping", "ip", "ifconfig", "hostname", "ps", "kill", "grep"),
    *("sed", "awk", "seq", "sort", "printf", "test", "sha256sum", "find", "date", "uname"),
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A connected SDK client (real engine), closed at the end of the session."""
    try:
        import docker
    except ImportError as err:  # pragma: no cover - it is a dependency
        _unavailable(f"docker SDK not importable: {err}")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as err:
        _unavailable(f"Docker engine unreachable: {err}")
    yield client
    client.close()


class ImageBuildError(Exception):
    pass


def _busybox_rootfs_tar(workdir: Path) -> bytes:
    """The bytes of a tar of a minimal busybox rootfs."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ImageBuildError("cannot build the busybox image: apt-get/dpkg-deb missing")
    download = workdir / "deb"
    download.mkdir()
    # apt drops privileges to _apt for downloads; let it write here.
    download.chmod(0o777)
    fetched = subprocess.run(
        ["apt-get", "download", "-q", "busybox-static"],
        cwd=download,
        capture_output=True,
        text=True,
        timeout=120,
    )
    debs = list(download.glob("busybox-static_*.deb"))
    if fetched.returncode != 0 or not debs:
        raise ImageBuildError(
            f"apt-get download busybox-static failed: {fetched.stderr.strip()[-500:]}"
        )
    unpacked = workdir / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, timeout=60)
    busybox = unpacked / "bin" / "busybox"
    try:
        listed = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    applets = sorted(set(listed or _FALLBACK_APPLETS) - {"busybox"})

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        # `busybox --install -s` needs a chroot (privileges); the symlinks are
        # all it would create.
        for applet in applets:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_busybox_image(client: Any, workdir: Path) -> str:
    """``BUSYBOX_IMAGE``, imported into the engine first if it is missing.
    Raises ImageBuildError.  Also used by bench/bench_docker.py."""
    import docker.errors

    try:
        client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    data = _busybox_rootfs_tar(workdir)
    repository, tag = BUSYBOX_IMAGE.split(":")
    client.api.import_image_from_data(
        data, repository=repository, tag=tag, changes=["ENV PATH=/bin", 'CMD ["sh"]']
    )
    try:
        client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        raise ImageBuildError(f"importing {BUSYBOX_IMAGE} did not produce it") from None
    return BUSYBOX_IMAGE


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port (``tests/redisserver.py``),
    stopped after the test.  A missing redis-server skips the test, except under
    ``CI=true``, where it fails (CI installs it)."""
    try:
        server = start_redis(tmp_path / "redis")
    except RedisUnavailable as err:
        _unavailable(str(err))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The name of a local busybox image, built once if missing."""
    try:
        return ensure_busybox_image(docker_client, tmp_path_factory.mktemp("busybox"))
    except ImageBuildError as err:
        _unavailable(str(err))
