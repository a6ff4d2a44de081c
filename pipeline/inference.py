"""CLIP scoring inside a Beam build: the image-caption cosine of each sample by RunInference, batched, on any runner.

    out = samples | ScoreSamples("runs/tiny/checkpoints/step-00001000.pt", batch_size=256, device="auto")
    out["scored"]      # (row with clip_score, image bytes): what FetchImages' `samples` carries, scored
    out["rejected"]    # REJECTION_SCHEMA rows: an image that does not decode, no caption, a score under min_score
    out["embeddings"]  # (key, image embedding, caption embedding), float32 (E,) L2-normalised; with_embeddings only

Three steps: Prepare (decode, centre crop at the model's resolution, tokenize: per element, on CPU) -> RunInference
(Beam batches the elements, then one model call a batch: normalize, both towers, L2-normalise) -> Attach (the score
into the row). Images stay uint8 until a whole batch is normalized at once, as clipmodel.embed.encode does, so a batch
crossing a process or a network is a quarter of the float size.

Beam's own PytorchModelHandlerTensor does not fit: it builds the model from a class and one state dict and calls its
forward(); CLIP has two towers, and training checkpoints wrap their weights. So the handler here loads through
clipmodel.inference.load_model, which unpickles with weights_only=True only: a model file holding code is refused.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import torch
import torch.nn.functional as F
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from clipmodel import transform
from clipmodel.inference import LoadedModel, inference_autocast, load_model
from clipmodel.tokenizer import tokenize
from pipeline.counters import Counters
from pipeline.rejection import Rejected, rejection_row
from schemas import fields, reasons
from schemas.reasons import REJECTED

EMBEDDINGS = "embeddings"
_NAMESPACE = "score"


class Prepared(NamedTuple):
    """A sample ready for the model, still carrying its row and image bytes so that no join is needed after."""

    row: dict
    image: bytes
    pixels: np.ndarray  # (3, R, R) uint8, centre crop
    tokens: np.ndarray  # (L,) int64


class Embedded(NamedTuple):
    score: float  # cosine of the two embeddings
    image: np.ndarray  # (E,) float32, L2-normalised
    text: np.ndarray  # (E,) float32, L2-normalised


def prepare(row: dict, image: bytes, resolution: int, context_length: int) -> Prepared:
    """The model's inputs for one sample; Rejected (decode_error, empty_caption) when it has none to give."""
    caption = row.get(fields.CAPTION)
    if not caption or not caption.strip():
        raise Rejected(reasons.EMPTY_CAPTION, "no caption to score the image against")
    try:
        pixels = transform.load(image, resolution)  # (3, R, R) uint8
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad bytes
        raise Rejected(reasons.DECODE_ERROR, f"{type(e).__name__}: {e}"[:200]) from None
    tokens = tokenize([caption], context_length)[0].numpy()  # (L,)
    return Prepared(row, image, pixels, tokens)


class Towers:
    """The loaded model as RunInference holds it. Everything device-side happens inside `embed` and only numpy
    arrays cross its boundary, so the same object works in-process and served to several processes (large_model)."""

    def __init__(self, loaded: LoadedModel, precision: str = "auto"):
        self.loaded, self.precision = loaded, precision
        self.device = next(loaded.model.parameters()).device

    def embed(self, pixels: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, R, R) uint8 and (B, L) int64 -> L2-normalised image and caption embeddings, (B, E) float32 each."""
        model = self.loaded.model
        with torch.inference_mode(), inference_autocast(self.device, self.precision):
            images = transform.normalize(pixels).to(self.device)  # (B, 3, R, R) float32
            image = F.normalize(model.encode_image(images).float(), dim=-1)  # (B, E)
            text = F.normalize(model.encode_text(torch.from_numpy(tokens).to(self.device)).float(), dim=-1)  # (B, E)
        return image.cpu().numpy(), text.cpu().numpy()


class ClipModelHandler(ModelHandler[Prepared, PredictionResult, Towers]):
    """RunInference's handle on a CLIP model: picklable settings here, the model built in load_model() on a worker."""

    def __init__(self, weights: str, arch: str | None = None, device: str = "auto", precision: str = "auto",
                 batch_size: int = 64, weights_sha256: str | None = None, large_model: bool = False):  # fmt: skip
        # Fixed-size batches: Beam's adaptive sizing starts at one element, which a GPU wastes.
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, large_model=large_model)
        self.weights, self.arch, self.device, self.precision = weights, arch, device, precision
        self.weights_sha256 = weights_sha256

    def load_model(self) -> Towers:
        loaded = load_model(self.weights, arch=self.arch, device=self.device)
        if self.weights_sha256 is not None and loaded.weights_sha256 != self.weights_sha256:
            # Workers load later than the pipeline was built: a file replaced meanwhile must not score half a build.
            raise ValueError(f"{self.weights} changed since the pipeline was built (sha256 differs)")
        return Towers(loaded, self.precision)

    def run_inference(
        self, batch: Sequence[Prepared], model: Towers, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        image, text = model.embed(np.stack([p.pixels for p in batch]), np.stack([p.tokens for p in batch]))
        scores = np.einsum("be,be->b", image, text)  # (B,) cosine: both are unit vectors
        return [
            PredictionResult(p, Embedded(float(s), i, t)) for p, s, i, t in zip(batch, scores, image, text, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[Prepared]) -> int:
        return sum(p.pixels.nbytes + p.tokens.nbytes for p in batch)  # what the model reads; not a pickle of it all

    def get_metrics_namespace(self) -> str:
        return _NAMESPACE


class _Prepare(beam.DoFn):
    def __init__(self, resolution: int, context_length: int):
        self.resolution, self.context_length = resolution, context_length

    def setup(self) -> None:
        self.counters = Counters(_NAMESPACE)

    def process(self, sample: tuple[dict, bytes]) -> Iterator:
        row, image = sample
        try:
            yield prepare(row, image, self.resolution, self.context_length)
        except Rejected as e:
            self.counters.inc(e.reason)
            yield beam.pvalue.TaggedOutput(REJECTED, rejection_row(row, e.reason, e.detail))


class _Attach(beam.DoFn):
    def __init__(self, with_embeddings: bool, min_score: float | None):
        self.with_embeddings, self.min_score = with_embeddings, min_score
        self.scored = Metrics.counter(_NAMESPACE, "scored")
        self.low_score = Metrics.counter(_NAMESPACE, reasons.LOW_CLIP_SCORE)

    def process(self, result: PredictionResult) -> Iterator:
        prepared, embedded = result.example, result.inference
        row = {**prepared.row, fields.CLIP_SCORE: embedded.score}
        self.scored.inc()
        if self.with_embeddings:  # every sample the model saw, kept or not: thresholds get tuned on these
            yield beam.pvalue.TaggedOutput(EMBEDDINGS, (row[fields.KEY], embedded.image, embedded.text))
        if self.min_score is not None and embedded.score < self.min_score:
            self.low_score.inc()
            detail = f"clip_score {embedded.score:.4f} < {self.min_score}"
            yield beam.pvalue.TaggedOutput(REJECTED, rejection_row(row, reasons.LOW_CLIP_SCORE, detail))
        else:
            yield row, prepared.image


class ScoreSamples(beam.PTransform):
    """(sample row, image bytes) -> {"scored", "rejected", "embeddings"}: see the module docstring.

    The model is loaded once here, on CPU, to fail early on a bad path and to learn its resolution and context
    length; workers then load the same file (checked by sha256) on `device` ("auto": CUDA when there is one).
    """

    def __init__(self, model_spec: str, arch: str | None = None, batch_size: int = 64, device: str = "auto",
                 precision: str = "auto", with_embeddings: bool = False, min_score: float | None = None,
                 large_model: bool = False):  # fmt: skip
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        loaded = load_model(model_spec, arch=arch, device="cpu")
        self.resolution, self.context_length = loaded.resolution, loaded.context_length
        self.description, self.weights_sha256 = loaded.description, loaded.weights_sha256
        # The file itself, not a run folder: a newer checkpoint landing mid-build must not be picked up by workers.
        self.handler = ClipModelHandler(loaded.source, arch, device, precision, batch_size, self.weights_sha256,
                                        large_model)  # fmt: skip
        self.with_embeddings, self.min_score = with_embeddings, min_score

    # Any, not dict[str, PCollection]: Beam warns about output hints that are not PCollections.
    def expand(self, samples: beam.PCollection) -> Any:
        prepared = samples | "Prepare" >> beam.ParDo(_Prepare(self.resolution, self.context_length)).with_outputs(
            REJECTED, main="prepared"
        )
        results = prepared.prepared | "Embed" >> RunInference(self.handler)
        attached = results | "Attach" >> beam.ParDo(_Attach(self.with_embeddings, self.min_score)).with_outputs(
            REJECTED, EMBEDDINGS, main="scored"
        )
        rejected = (prepared[REJECTED], attached[REJECTED]) | "Rejections" >> beam.Flatten()
        return {"scored": attached.scored, REJECTED: rejected, EMBEDDINGS: attached[EMBEDDINGS]}
