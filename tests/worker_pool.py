"""Beam SDK worker pools in their own processes, as Flink and Spark runners use them (environment_type=EXTERNAL)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from dask_cluster import free_port


class WorkerPool:
    """`python -m apache_beam.runners.worker.worker_pool_main`: each job asks it for SDK workers, which it starts as
    child processes. `options` is what a job passes to use it through the portable runner."""

    def __init__(self, folder: Path | None = None, timeout: float = 60):
        self.port = free_port()
        log = open(folder / "worker_pool.log", "ab") if folder else subprocess.DEVNULL  # noqa: SIM115
        bin_dir = str(Path(sys.executable).parent)
        # The pool starts each SDK worker as `python -c ...`, found on PATH: this interpreter's, with our path.
        env = {
            **os.environ,
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        cmd = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={self.port}"]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
        self._wait(timeout)

    @property
    def options(self) -> list[str]:
        return [
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=EXTERNAL",
            f"--environment_config=127.0.0.1:{self.port}",
        ]

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker pool exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
