"""`wit filter`: a dataset and its embeddings (`wit encode`) -> a new, resharded dataset of the samples that pass.

Filters, in the order they judge (the first that rejects a sample names it): decontamination (image embedding close
to an evaluation image), unwanted concepts (image embedding close to a text prompt), CLIP score (image-caption
cosine under a threshold or outside the best fraction), then semantic dedup (SemDeDup) among what is left. Kept
samples carry clip_score, sem_cluster and sem_group; every input sample is kept or rejected exactly once, and the
new dataset's manifest counts the rejections by reason and records the configuration and both inputs.

The launching process reads the embeddings' info, trains the k-means on a fixed sample and encodes the prompts and
evaluation images (with --model); the Beam pipeline does the rest, one embeddings shard or one cluster at a time.
"""

import argparse
import hashlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import apache_beam as beam

from beam_jobs.filter_config import FilterConfig, RunConfig, resolve
from beam_jobs.options import split_args
from pipeline import fsio
from pipeline.filter.plan import FilterPlan, embeddings_info, make_plan
from pipeline.filter.references import ConceptConfig, DecontaminateConfig, References, eval_image_files, eval_npy
from pipeline.filter.semdedup import SemDedupConfig
from pipeline.filter.stage import FilterSamples
from pipeline.reshard import Reshard
from pipeline.shard_reader import load_manifest
from pipeline.write_dataset import WORK_DIR, FinalizeDataset, WriteRejections, run_fingerprint
from schemas import DatasetManifest, fields, reasons
from schemas.manifest import MANIFEST_NAME, REJECTED_DIR, SHARDS_DIR
from schemas.reasons import REJECTED

# The defaults the flags' help shows: the config dataclasses are their only home (a flag left out is None).
_SEMDEDUP, _CONCEPTS, _DECONTAMINATE, _RUN = SemDedupConfig(), ConceptConfig(), DecontaminateConfig(), RunConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder to filter (ours: manifest.json)")
    parser.add_argument("--embeddings", required=True, metavar="EMB", help="its embeddings folder (`wit encode`)")
    parser.add_argument("--out", required=True, metavar="DATASET2", help="new dataset folder to write")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML/JSON file, one section per filter "
                        "(decontaminate, concepts, clip_score, semdedup, run); flags override it")  # fmt: skip
    score = parser.add_argument_group("CLIP score").add_mutually_exclusive_group()
    score.add_argument("--min-clip-score", type=float, metavar="S", help="keep image-caption cosine >= S (LAION: 0.28)")
    score.add_argument("--top-fraction", type=float, metavar="F", help="keep the best fraction F (DataComp: 0.3)")
    dedup = parser.add_argument_group("semantic dedup (any of these turns it on)")
    dedup.add_argument("--semdedup-eps", type=float, metavar="EPS",
                       help=f"duplicates: cosine > 1 - EPS ({_SEMDEDUP.eps:g})")  # fmt: skip
    dedup.add_argument("--clusters", type=int, metavar="K", help="k-means clusters (default about sqrt(rows))")
    dedup.add_argument("--seed", type=int, help=f"k-means seed and training sample (default {_SEMDEDUP.seed})")
    refs = parser.add_argument_group("concepts and decontamination (encoded with --model)")
    refs.add_argument("--concepts", type=Path, metavar="FILE", help="unwanted-concept prompts, one a line")
    refs.add_argument("--concept-threshold", type=float, metavar="X",
                      help=f"drop image-prompt cosine >= X ({_CONCEPTS.threshold:g})")  # fmt: skip
    refs.add_argument("--decontaminate", metavar="EVAL", help="evaluation image folder, or a .npy of their embeddings")
    refs.add_argument("--eval-threshold", type=float, metavar="X",
                      help=f"drop image-eval cosine >= X ({_DECONTAMINATE.threshold:g})")  # fmt: skip
    refs.add_argument("--model", metavar="CKPT", help="the model that made EMB: run folder, checkpoint or weights")
    refs.add_argument("--arch", metavar="NAME", help="architecture of a bare weights file (default: from its shapes)")
    refs.add_argument("--device", choices=("auto", "cpu", "cuda"), help=f"where --model runs (default {_RUN.device})")
    parser.add_argument("--samples-per-shard", type=int, metavar="N",
                        help=f"samples per output shard ({_RUN.samples_per_shard})")  # fmt: skip


def load_references(cfg: FilterConfig, info: dict) -> tuple[References, ...]:
    """The reference sets, in precedence order (evaluation images, then concepts), embedded by the model that made
    the embeddings; ValueError when a model is needed and missing, or is another model."""
    eval_path, prompts = cfg.decontaminate.path, cfg.concepts.prompts
    if eval_path is not None and not Path(eval_path).exists():
        raise FileNotFoundError(f"{eval_path}: no such evaluation folder or .npy file")
    npy = eval_path is not None and eval_path.endswith(".npy")
    loaded = None
    if prompts or (eval_path is not None and not npy):
        if cfg.run.model is None:
            raise ValueError("--model is required to encode concept prompts or evaluation images: give the model "
                             f"that made the embeddings ({info.get('model', 'see embeddings.json')})")  # fmt: skip
        from clipmodel.inference import load_model

        loaded = load_model(cfg.run.model, arch=cfg.run.arch, device=cfg.run.device)
        want = info.get("model_weights_sha256")
        if want is not None and loaded.weights_sha256 != want:
            raise ValueError(f"{cfg.run.model} is not the model that made the embeddings ({info.get('model')}); "
                             "cosines across models mean nothing")  # fmt: skip
    refs = []
    if eval_path is not None:
        if npy:
            names, vectors = eval_npy(eval_path)
        else:
            from clipmodel.embed.encode_refs import encode_image_files

            names, paths = eval_image_files(eval_path)
            vectors = encode_image_files(loaded, paths)
        refs.append(References(reasons.EVAL_SIMILAR, names, vectors, cfg.decontaminate.threshold))
    if prompts:
        from clipmodel.embed.encode_refs import encode_texts

        vectors = encode_texts(loaded, prompts)
        refs.append(References(reasons.UNWANTED_CONCEPT, prompts, vectors, cfg.concepts.threshold))
    return tuple(refs)


def _rows(source: tuple[int, str]) -> Iterator[tuple[str, tuple[int, dict]]]:
    index, parquet = source
    for row in fsio.read_parquet(parquet).to_pylist():
        yield row[fields.KEY], (index, row)


def filter_pipeline(dataset: Path, manifest: DatasetManifest, plan: FilterPlan, out: Path, config: dict, options):
    """The Beam pipeline: rows of `dataset` through FilterSamples, the kept samples copied into a new dataset at `out`
    (pipeline.reshard): only rows and embeddings are judged; images go from the old shards to the new ones."""
    sources = {i: (str(dataset / s.tar.path), str(dataset / s.parquet.path)) for i, s in enumerate(manifest.shards)}
    per_shard = config["run"]["samples_per_shard"]
    work = str(out / WORK_DIR)
    shutil.rmtree(work, ignore_errors=True)
    with beam.Pipeline(options=options) as p:
        rows = (
            p | "Shards" >> beam.Create([(i, pq) for i, (_, pq) in sources.items()]) | "ReadRows" >> beam.FlatMap(_rows)
        )
        judged = rows | "Filter" >> FilterSamples(plan)
        shards = judged.kept | "Reshard" >> Reshard(str(out), sources, per_shard, work)
        parts = judged[REJECTED] | "Rejections" >> WriteRejections(str(out), max(1, len(sources)), work)
        _ = (shards, parts) | "Written" >> beam.Flatten() | "Finalize" >> FinalizeDataset(str(out), config, 0)
    shutil.rmtree(work, ignore_errors=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(argv: Sequence[str] | None = None) -> DatasetManifest:
    parser = argparse.ArgumentParser(prog="wit filter", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    args, options = split_args(parser, argv)
    try:
        cfg = resolve(args)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    dataset, out, emb = Path(args.dataset), Path(args.out), Path(args.embeddings)
    if out.resolve() == dataset.resolve():
        raise ValueError("--out must be a new folder: filtering writes a new dataset and leaves DATASET as it is")
    manifest = load_manifest(dataset)
    info = embeddings_info(emb, dataset)
    config = {
        "job": "filter",
        "dataset": str(dataset.resolve()),
        "dataset_manifest_sha256": _sha256(dataset / MANIFEST_NAME),
        "embeddings": str(emb.resolve()),
        "embeddings_model": info.get("model"),
        "embeddings_model_sha256": info.get("model_weights_sha256"),
        **cfg.to_dict(),
    }
    if (out / MANIFEST_NAME).is_file() and run_fingerprint(load_manifest(out).config) == run_fingerprint(config):
        print(f"{out}: already filtered with this configuration")
        return load_manifest(out)
    plan = make_plan(emb, info, cfg.clip_score, load_references(cfg, info), cfg.semdedup)
    for folder in (SHARDS_DIR, REJECTED_DIR):  # regenerated whole: nothing of an earlier run remains
        shutil.rmtree(out / folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    filter_pipeline(dataset, manifest, plan, out, config, options)
    result = load_manifest(out)
    dropped = ", ".join(f"{r} {n}" for r, n in sorted(result.counts.get(reasons.SCORE, {}).items())) or "none"
    print(f"kept {result.rows} of {manifest.rows} samples in {len(result.shards)} shards; rejected: {dropped}")
    return result
