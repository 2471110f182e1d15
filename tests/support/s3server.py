"""A real S3 server (moto) on 127.0.0.1 for tests: started, used, stopped; nothing beyond loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest
from moto import server as moto_server


class _RequestLog(logging.Handler):
    """Counts the HTTP requests moto's werkzeug server logs (the real server, not a mock of pyarrow)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def gets(self, key_part: str) -> int:
        return sum(1 for line in self.lines if "GET /" in line and key_part in line)


def loopback_s3() -> Iterator[dict]:
    """Yield {endpoint, port, fs (admin S3FileSystem), log}; AWS_* env points at the server meanwhile."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    log = _RequestLog()
    wz = logging.getLogger("werkzeug")
    old_level = wz.level
    wz.setLevel(logging.INFO)
    wz.addHandler(log)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        admin = pafs.S3FileSystem(
            endpoint_override=endpoint,
            region="us-east-1",
            allow_bucket_creation=True,
            access_key="testing",
            secret_key="testing",
        )
        admin.create_dir("voices")
        yield {"endpoint": endpoint, "port": port, "fs": admin, "log": log}
    finally:
        mp.undo()
        server.stop()
        wz.removeHandler(log)
        wz.setLevel(old_level)
