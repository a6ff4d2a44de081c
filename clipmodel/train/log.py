"""What a training run reports: RUN/metrics.jsonl (one JSON object a line), a tqdm bar, TensorBoard when installed.

metrics.jsonl is what the stats report plots. Each line has `kind` ("train" or "eval"), `step` (optimiser steps
done) and `samples` (training pairs seen); train lines add loss, lr, logit_scale (the exp'd scale, <= 100),
temperature (1 / logit_scale), samples_per_s, grad_norm, epoch and the loader's counters summed over ranks
(`data_samples`: samples batched so far, prefetched ones included; `data_<reason>`: samples or shards skipped, by
clipmodel.data.tarstream's reason codes); eval lines add zero-shot top1/top5. A resumed run first drops the lines past
its checkpoint, so the file reads as one run.
"""

import json
import math
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of `path` whose step is at most `step` (what the resumed checkpoint had seen)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", math.inf) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
    path.write_text("".join(f"{line}\n" for line in kept))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR))


class RunLog:
    """The reporting of one process: everything is a no-op except on the main rank."""

    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int, total_steps: int, resumed: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = self._bar = self._tb = None
        self._last_time, self._last_samples = time.monotonic(), None
        if not enabled:
            return
        if resumed:
            _truncate_after(self.path, start_step)
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self._tb = _tensorboard(Path(run_dir))
        from tqdm import tqdm

        # disable=None: a bar on a terminal, nothing in a log file or a test.
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", disable=None, dynamic_ncols=True)

    def throughput(self, samples: int) -> float | None:
        """Samples per second since the previous call (None on the first)."""
        now = time.monotonic()
        rate = None
        if self._last_samples is not None and now > self._last_time:
            rate = (samples - self._last_samples) / (now - self._last_time)
        self._last_time, self._last_samples = now, samples
        return rate

    def record(self, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = {"kind": kind, **values}
        self._file.write(json.dumps(line, sort_keys=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, int | float) and name not in ("step",):
                    self._tb.add_scalar(f"{kind}/{name}", value, values["step"])
        if kind == "train" and self._bar is not None:
            post = {"loss": f"{values['loss']:.4f}", "lr": f"{values['lr']:.2e}", "T": f"{values['temperature']:.4f}"}
            if values.get("samples_per_s"):
                post["samples/s"] = f"{values['samples_per_s']:.1f}"
            self._bar.set_postfix(post, refresh=False)
        if kind == "eval" and self._bar is not None:
            self._bar.write(f"step {values['step']}: zero-shot top1 {values['top1']:.3f} top5 {values['top5']:.3f}")

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        for thing in (self._bar, self._tb, self._file):
            if thing is not None:
                thing.close()
        self._file = self._bar = self._tb = None
