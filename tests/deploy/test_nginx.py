"""docker/nginx.conf in Debian's nginx: chat handshakes limited per address, and no chat
query (a conversation id and its visitor key) in the access log."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

NGINX_CONF = Path(__file__).resolve().parents[2] / "docker" / "nginx.conf"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def upstream():
    """Stands in for the daphne replicas: answers every request 200."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def nginx(tmp_path: Path, upstream: int):
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.skip("no nginx on this machine (bin/setup test installs Debian's nginx-light)")
    port = free_port()
    site = (
        NGINX_CONF.read_text()
        .replace("server web:8000;", f"server 127.0.0.1:{upstream};")
        .replace("listen 80;", f"listen 127.0.0.1:{port};")
        .replace("/var/log/nginx/access.log", str(tmp_path / "chat.log"))
    )
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log {tmp_path}/other.log; include {tmp_path}/site.conf; }}\n"
    )
    conf = ["-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run([binary, "-t", *conf], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    subprocess.run([binary, *conf], check=True)
    yield f"http://127.0.0.1:{port}", tmp_path / "chat.log"
    subprocess.run([binary, *conf, "-s", "stop"])


def status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


def test_chat_handshakes_are_limited_per_address_and_their_query_is_not_logged(nginx) -> None:
    base, chat_log = nginx
    url = f"{base}/ws/chat/?conversation=4f1c0000-0000-4000-8000-000000000000&visitor=v-secret"

    # when: one address opens 70 chat connections at once
    codes = [status(url) for _ in range(70)]

    # then: a burst of 60 (and the one the rate allows) go through, the rest are refused
    assert codes[:61] == [200] * 61 and codes[-8:] == [429] * 8
    assert status(f"{base}/admin/") == 200  # the rest of the site is not limited
    logged = chat_log.read_text()
    assert logged.count('"GET /ws/chat/"') == 70
    assert "v-secret" not in logged and "4f1c0000" not in logged
