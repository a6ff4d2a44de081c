"""Settings of the encoder and of the search index: frozen dataclasses without torch or faiss, read by `wit --help`."""

from dataclasses import dataclass


@dataclass(frozen=True)
class EncodeConfig:
    batch_size: int = 256
    workers: int = 2  # DataLoader workers reading and decoding shards; 0: in the main process
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 / fp16
    limit_shards: int | None = None  # encode only the first N shards (a quick look at a big dataset)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {self.batch_size} and {self.workers}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "auto"  # auto: flat up to ivf_threshold rows, IVF-PQ above; or flat / ivfpq
    ivf_threshold: int = 200_000
    nlist: int | None = None  # inverted lists; None: 4 sqrt(N), at most N / 39
    # PQ sub-quantizers, i.e. code bytes per vector; None: the largest divisor of E <= E / 8 (64 bytes for 512-d,
    # a 16th of the float16 row; the exact re-scoring makes up what coarser codes lose, and training costs ~m).
    m: int | None = None
    nbits: int = 8  # bits per sub-quantizer code (fewer under 39 * 256 rows)
    train_size: int | None = None  # rows k-means trains on; None: min(N, max(64 nlist, 39 * 2**nbits))
    nprobe: int = 32  # lists visited per query (search time only)
    # Candidates per wanted neighbour re-scored exactly (search time only). PQ's ranking error, not the lists probed,
    # is what loses neighbours at 512-d: on 200k clustered vectors recall@10 is 0.69 at 10 and 0.97 at 40, for
    # 0.95 -> 1.2 ms a query (nprobe 32 -> 96 at refine 10 changes nothing).
    refine: int = 40
    seed: int = 0  # of the training sample

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "ivfpq"):
            raise ValueError(f"index kind must be auto, flat or ivfpq, got {self.kind!r}")
        if min(self.ivf_threshold, self.nbits, self.nprobe, self.refine) < 1:
            raise ValueError("ivf_threshold, nbits, nprobe and refine must be >= 1")
        if (self.nlist is not None and self.nlist < 1) or (self.m is not None and self.m < 1):
            raise ValueError("nlist and m must be >= 1")
