"""Settings of an evaluation: a frozen dataclass without torch, read by `wit --help`."""

from dataclasses import dataclass

from clipmodel import templates as tpl


@dataclass(frozen=True)
class EvalConfig:
    templates: tuple[str, ...] = tpl.DEFAULT
    topk: tuple[int, ...] = (1, 5)
    batch_size: int = 256  # images (and prompts) per forward pass
    workers: int = 2  # DataLoader processes decoding images, as many as EncodeConfig's; 0: in this process

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tpl.check_templates(tuple(self.templates), "templates"))
        object.__setattr__(self, "topk", tuple(self.topk))
        if self.batch_size < 1 or self.workers < 0 or not self.topk or min(self.topk) < 1:
            raise ValueError(f"batch_size and every k must be >= 1 and workers >= 0 ({self})")
