"""A dask.distributed cluster of separate processes on loopback: one scheduler, single-thread workers."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """`dask scheduler` and `dask worker` processes, as a user starts them; `address` is what jobs connect to."""

    def __init__(self, workers: int = 2, folder: Path | None = None):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.folder = folder
        self.scheduler = self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port)], "scheduler")
        self.workers = [self.start_worker(f"w{i}") for i in range(workers)]
        self.wait_for_workers(workers)

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab") if self.folder else subprocess.DEVNULL  # noqa: SIM115
        # The workers import what the tasks reference, tests' own helpers included: give them this process's path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        return subprocess.Popen(
            [*cmd, "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, env=env
        )

    def start_worker(self, name: str) -> subprocess.Popen:
        cmd = [DASK, "worker", self.address, "--nthreads", "1", "--name", name, "--death-timeout", "60"]
        return self._start([*self.launcher(name), *cmd], name)

    def launcher(self, name: str) -> list[str]:
        """What a worker's command is run under (benchmarks pin each worker to a core with taskset)."""
        return []

    def worker_pids(self) -> dict[str, int]:
        """{worker name: pid of the process that runs its tasks} (a nanny's child, not the nanny itself)."""
        from dask.distributed import Client

        with Client(self.address, timeout=30) as client:
            names = {address: w["name"] for address, w in client.scheduler_info(n_workers=-1)["workers"].items()}
            return {names[address]: pid for address, pid in client.run(os.getpid).items() if address in names}

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from dask.distributed import Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(self.address, timeout=10) as client:
                    client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
