"""nginx serving a folder on a loopback port, for fetch benchmarks: a C server that costs the tools it serves almost
no CPU (a Python server in the benchmark's own process took CPU from both tools and hid most of their difference).

    with Nginx(folder) as server:
        server.base_url  # http://127.0.0.1:PORT; /3.jpg?n=17 serves folder/3.jpg (static files ignore the query)
"""

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_CONF = """
worker_processes 1;  # one: the tools measured need the 2 cores; sendfile keeps one worker far ahead of them
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    types {{ image/jpeg jpg; text/plain txt; }}
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        raise RuntimeError("nginx not found: apt-get install -y nginx-light")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder).resolve()
        self.port = port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.tmp: Path | None = None

    @staticmethod
    def version() -> str:
        done = subprocess.run([_binary(), "-v"], capture_output=True, text=True)
        return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")

    def __enter__(self) -> "Nginx":
        self.tmp = Path(tempfile.mkdtemp(prefix="wit-nginx-"))
        conf = self.tmp / "nginx.conf"
        conf.write_text(_CONF.format(tmp=self.tmp, port=self.port, root=self.folder))
        self.proc = subprocess.Popen([_binary(), "-c", str(conf), "-p", str(self.tmp)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                self.pid = self.proc.pid
                return self
            except OSError:
                time.sleep(0.1)
        log = (self.tmp / "error.log").read_text(errors="replace") if (self.tmp / "error.log").exists() else ""
        self.__exit__()
        raise RuntimeError(f"nginx did not start on port {self.port}: {log[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish the responses in progress
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
