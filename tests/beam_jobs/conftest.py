"""What the job tests share: a folder served over loopback HTTP, the digests of every file a job wrote, and the
defaults of a job's flags."""

import argparse
import functools
import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass  # one stderr line per request would bury the test output


@pytest.fixture
def serve_folder() -> Iterator[Callable[..., str]]:
    """serve_folder(root, handler=QuietHandler) -> base URL; every server started is stopped after the test."""
    servers = []

    def start(root: Path, handler: type = QuietHandler) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root by relative path, temporary files left aside."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and ".tmp" not in p.name
    }


@pytest.fixture
def digests() -> Callable[[Path], dict[str, str]]:
    return file_digests


def option_defaults(add_arguments: Callable[[argparse.ArgumentParser], None]) -> dict[str, object]:
    """{dest: default} of every option a job's `add_arguments` adds (--help aside)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}


@pytest.fixture
def flag_defaults() -> Callable[[Callable], dict[str, object]]:
    return option_defaults
