"""`wit build`: candidates -> text curation -> candidate dedup -> query balancing -> fetch -> image dedup -> dataset.

Two Beam pipelines, so that the expensive part resumes and the global part stays exact:
1. fetch phase: everything up to the fetch, written bucket by bucket (resumable, as `wit fetch`) to a staging
   dataset under OUT/.build/;
2. dedup phase: exact and near-duplicate images, earlier datasets, evaluation images and the blocklist judged over
   every fetched image at once, then (with --score-model) each survivor's CLIP score, those under --min-clip-score
   rejected, then the survivors resharded into OUT with contiguous shard numbers.
Rejections of every stage land in OUT/rejected/ with stage and reason; kept + rejected = candidates, exactly.
"""

import argparse
import sys
from collections.abc import Iterator, Sequence

import apache_beam as beam

from beam_jobs.build_config import BuildConfig, ScoreConfig, resolve
from beam_jobs.fetch import add_fetch_arguments, add_source_arguments
from beam_jobs.options import split_args
from pipeline import fsio
from pipeline.batches import BATCH_ROWS, Unbatch
from pipeline.curate.balance import BalanceConfig, BalanceQueries, WriteBalanceCounts
from pipeline.curate.dedup import DedupCandidates, DedupConfig, ExcludeSeen
from pipeline.curate.image_dedup import DedupImages, ImageDedupConfig
from pipeline.curate.image_refs import reference_sets
from pipeline.curate.text import CurateText, TextConfig
from pipeline.fetch.hosts import format_host_summary, host_summary
from pipeline.fetch.stage import BucketJob, FetchBuckets
from pipeline.reshard import Reshard, read_kept
from pipeline.shard_reader import load_manifest
from pipeline.shards import carry_files
from pipeline.sources.url_lists import ReadUrlLists, count_rows
from pipeline.spill import Spill, read_spilled
from pipeline.write_dataset import (
    WORK_DIR,
    Carried,
    FinalizeDataset,
    WriteRejections,
    bucket,
    buckets_for,
    completed_buckets,
    run_fingerprint,
)
from schemas import DatasetManifest, fields
from schemas.manifest import MANIFEST_NAME, REJECTED_DIR, SHARDS_DIR
from schemas.reasons import REJECTED

STAGE_DIR = ".build"  # staging inside OUT: hidden, and removed once the dataset is complete
# What image dedup reads of each fetched sample: its hashes and signals, and what a rejection row carries.
_DEDUP_COLUMNS = [fields.KEY, fields.URL, fields.CAPTION, fields.PAGE_URL, fields.SOURCE, fields.SOURCE_ROW,
                  fields.SHA256, fields.PHASH, fields.ORIGINAL_WIDTH, fields.ORIGINAL_HEIGHT,
                  fields.COLOUR_SIG]  # fmt: skip
# The defaults the flags' help shows: the config dataclasses are their only home (a flag left out is None).
_TEXT, _DEDUP, _BALANCE, _IMAGE_DEDUP = TextConfig(), DedupConfig(), BalanceConfig(), ImageDedupConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--config", help="YAML/JSON file, one section per stage (gs:// etc. too); flags override it")
    add_fetch_arguments(parser)
    curation = parser.add_argument_group("curation")
    curation.add_argument("--languages", help="comma-separated language codes to keep "
                          f"(default {','.join(_TEXT.languages)}; '' keeps all)")  # fmt: skip
    curation.add_argument("--lang-model", choices=("fasttext", "langdetect"), help=f"default {_TEXT.lang_model}")
    curation.add_argument("--min-words", type=int, help=f"default {_TEXT.min_words}")
    curation.add_argument("--dedup", choices=("url", "pair", "none"), help=f"candidate dedup key (default {_DEDUP.by})")
    curation.add_argument("--t", type=int, help=f"WIT balancing: pairs kept per query entry (default {_BALANCE.t})")
    curation.add_argument("--metadata", help="query list: one entry per line, or MetaCLIP metadata.json")
    curation.add_argument("--no-balance", action="store_true", default=None, help="skip query matching and balancing")
    curation.add_argument("--near-k", type=int,
                          help=f"near-duplicate Hamming distance on the 64-bit pHash ({_IMAGE_DEDUP.k})")  # fmt: skip
    curation.add_argument("--exclude-from", nargs="+", metavar="DATASET", help="earlier datasets not to repeat")
    curation.add_argument("--decontaminate", metavar="EVAL_DIR", help="drop near-copies of these evaluation images")
    curation.add_argument("--blocklist", metavar="FILE", help="sha256 / pHash values never to write")
    scoring = parser.add_argument_group("CLIP scoring (after image dedup; the `score` config section)")
    scoring.add_argument("--score-model", metavar="WEIGHTS", help="run folder, checkpoint or weights: store clip_score")
    scoring.add_argument("--score-arch", metavar="NAME", help="architecture of bare weights (default: from shapes)")
    scoring.add_argument("--min-clip-score", type=float, metavar="X", help="reject image-caption cosine under X")


def _curate(batches: beam.PCollection, cfg: BuildConfig, work: str, rows_hint: int | None = None) -> tuple:
    """Text rules and language, earlier datasets, candidate dedup, query balancing over Rows batches: what is left
    (batches), the rejections (a tuple of PCollections of batches, one a stage: a Flatten would make the in-process
    runner buffer them), and the balancing outputs (None when balancing is off).

    Each stage that must see rows together (a URL's spellings, a dataset's earlier URLs, the entry counts before
    sampling) brings them together through spill files under `work`, never a shuffle of the rows: memory is one
    partition's rows, whatever the input's size. `rows_hint`, the candidates counted at launch, sizes the
    partitions (without it each stage counts its input first, which holds it in memory)."""
    rejected = []
    text = batches | "Text" >> CurateText(cfg.text)
    kept = text.kept
    rejected.append(text[REJECTED])
    if cfg.run.exclude_from:
        seen = kept | "ExcludeSeen" >> ExcludeSeen(cfg.run.exclude_from, work, rows_hint=rows_hint)
        kept = seen.kept
        rejected.append(seen[REJECTED])
    dedup = kept | "Dedup" >> DedupCandidates(cfg.dedup, work, rows_hint=rows_hint)
    kept = dedup.kept
    rejected.append(dedup[REJECTED])
    balanced = None
    if cfg.run.balance:
        balanced = kept | "Balance" >> BalanceQueries(cfg.balance, work, rows_hint=rows_hint)
        kept = balanced.kept
        rejected.extend(balanced.rejected)
    return kept, tuple(rejected), balanced


def fetch_phase(cfg: BuildConfig, config: dict, out: str, stage: str, options, progress: bool) -> int:
    """Pipeline 1: sources to a staging dataset of fetched samples and every rejection so far (resumable); returns
    its bucket count, which also names the staging shard that holds each key."""
    fingerprint = run_fingerprint(config)
    candidates = count_rows(cfg.sources)
    buckets = buckets_for(candidates, cfg.run.samples_per_shard)
    done = completed_buckets(stage, fingerprint) if fsio.is_dir(stage) else {}
    done = {i: r for i, r in done.items() if r.buckets == buckets}
    if done:
        print(f"resuming: {len(done)} of {buckets} fetch buckets of an earlier run are complete and kept")
    work = fsio.join(out, STAGE_DIR, WORK_DIR)
    fsio.remove_tree(work)
    job = BucketJob(stage, buckets, fingerprint, work, 0, frozenset(done))
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> ReadUrlLists(cfg.sources, batch_rows=BATCH_ROWS)
        # Curation reruns whole (it is cheap and its counts are global); only the fetch skips finished buckets.
        kept, rejected, balanced = _curate(read.candidates, cfg, work, rows_hint=candidates)
        if balanced is not None:
            _ = balanced | "WriteCounts" >> WriteBalanceCounts(str(out))
        rejected = (read[REJECTED], *(r | f"UnbatchRejected{i}" >> Unbatch() for i, r in enumerate(rejected)))
        written = {"candidates": kept | "Unbatch" >> Unbatch(), "rejected": rejected} | "Fetch" >> FetchBuckets(
            job, cfg.fetch, cfg.image, threads=cfg.run.threads, image_workers=cfg.run.image_workers, progress=progress
        )
        _ = written | "Finalize" >> FinalizeDataset(stage, config, buckets, done)
    fsio.remove_tree(work)
    return buckets


def _dedup_rows(path: str) -> Iterator[dict]:
    # A staging shard from before colour_sig existed lacks the column: its rows read as null, which never vetoes.
    names = set(fsio.parquet_schema(path).names)
    yield from fsio.read_parquet(path, columns=[c for c in _DEDUP_COLUMNS if c in names]).to_pylist()


def _update(row: dict) -> dict:
    """What image dedup and scoring set on a kept sample; the rest of its row is the staging shard's."""
    return {fields.KEY: row[fields.KEY], fields.DUP_GROUP: row.get(fields.DUP_GROUP)} | (
        {fields.CLIP_SCORE: row[fields.CLIP_SCORE]} if fields.CLIP_SCORE in row else {}
    )


def _score(kept: beam.PCollection, rejected: tuple, cfg: ScoreConfig, sources: dict, work: str) -> tuple:
    """Each kept sample's update with its clip_score, and the rejections with those scored under cfg.min_score.

    The kept rows are spilled per staging shard; the worker that owns a shard reads its images from the staging tar
    and scores them there, so image bytes go from the tar to the model inside one worker, never through a shuffle.
    """
    from pipeline.inference import ScoreSamples  # torch only for builds that score

    def samples(element: tuple[int, list[str]]) -> Iterator[tuple[dict, bytes]]:
        source, paths = element
        yield from read_kept(*sources[source], {r[fields.KEY]: r for r in read_spilled(paths)})

    with_images = kept | "SpillToScore" >> Spill(fsio.join(work, "score")) | "ReadToScore" >> beam.FlatMap(samples)
    scored = with_images | "Score" >> ScoreSamples(cfg.model, cfg.arch, cfg.batch_size, cfg.device, cfg.precision,
                                                   min_score=cfg.min_score)  # fmt: skip
    updates = scored["scored"] | "Updates" >> beam.Map(lambda sample: _update(sample[0]))
    return updates, (*rejected, scored[REJECTED])


def dedup_phase(
    cfg: BuildConfig, config: dict, out: str, staged: DatasetManifest, stage: str, buckets: int, options
) -> None:
    """Pipeline 2: image dedup over the rows of every fetched sample, then the survivors copied from the staging
    shards into OUT's shards (pipeline.reshard), beside all rejections. Only rows are judged; images are copied."""
    for folder in (SHARDS_DIR, REJECTED_DIR):  # regenerated whole: nothing stale from an interrupted run remains
        fsio.remove_tree(fsio.join(out, folder))
    carry_files(stage, out, staged.rejected)
    carried = Carried(rejected=staged.rejected, counts=dict(staged.counts))
    references = reference_sets(
        exclude_from=cfg.run.exclude_from,
        decontaminate=[cfg.run.decontaminate] if cfg.run.decontaminate else [],
        blocklist=[cfg.run.blocklist] if cfg.run.blocklist else [],
    )
    # The fetch phase wrote bucket b as staging shard b, so a key's source shard is its bucket.
    sources = {int(s.name): (fsio.join(stage, s.tar.path), fsio.join(stage, s.parquet.path)) for s in staged.shards}
    work = fsio.join(out, STAGE_DIR, WORK_DIR)
    fsio.remove_tree(work)
    with beam.Pipeline(options=options) as p:
        rows = p | "Shards" >> beam.Create([pq for _, pq in sources.values()]) | "ReadRows" >> beam.FlatMap(_dedup_rows)
        # Judged through spill files, not shuffles: the default runner holds a shuffle in memory, and these are
        # every fetched sample's rows.
        spilled = fsio.join(work, "image_dedup"), sum(s.rows for s in staged.shards)
        judged = rows | "DedupImages" >> DedupImages(cfg.image_dedup, references, *spilled)
        by_source = beam.Map(lambda update: (bucket(update[fields.KEY], buckets), update))
        kept, rejected = judged.kept | "KeptUpdates" >> beam.Map(_update), (judged[REJECTED],)
        if cfg.score.model is not None:
            kept, rejected = _score(kept | "BySource" >> by_source, rejected, cfg.score, sources, work)
        shards = kept | "ToSource" >> by_source | "Reshard" >> Reshard(out, sources, cfg.run.samples_per_shard, work)
        parts = rejected | "Rejections" >> WriteRejections(out, max(1, len(sources)), work, carried.first_index())
        _ = (
            (shards, parts)
            | "Written" >> beam.Flatten()
            | "Finalize" >> FinalizeDataset(out, config, 0, carried=carried)
        )
    fsio.remove_tree(work)


def _model_identity(cfg: ScoreConfig, parser: argparse.ArgumentParser) -> dict:
    """What the manifest says of the scoring model: the file the weights came from and its sha256 (a run folder's
    newest checkpoint changes as it trains, and a rerun with other weights must not pass for the same build)."""
    from clipmodel.inference import load_model

    try:
        loaded = load_model(cfg.model, arch=cfg.arch, device="cpu")
    except (OSError, ValueError) as e:
        parser.error(f"--score-model: {e}")
    return {"description": loaded.description, "weights": loaded.source, "weights_sha256": loaded.weights_sha256}


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wit build", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    args, options = split_args(parser, argv)
    if not args.candidates:
        parser.error("--candidates is required")
    try:
        cfg = resolve(args)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    config = {"job": "build", **cfg.to_dict()}
    if cfg.score.model is not None:
        config["score_model"] = _model_identity(cfg.score, parser)
    out, stage = args.out, fsio.join(args.out, STAGE_DIR, "fetched")  # strings: pathlib would mangle gs://
    built = fsio.is_file(fsio.join(out, MANIFEST_NAME))
    if built and run_fingerprint(load_manifest(out).config) == run_fingerprint(config):
        print(f"{out}: already built with this configuration")
        return
    fsio.mkdirs(out)
    progress = not args.no_progress and sys.stderr.isatty()
    buckets = fetch_phase(cfg, config | {"phase": "fetch"}, out, stage, options, progress)
    dedup_phase(cfg, config, out, load_manifest(stage), stage, buckets, options)
    fsio.remove_tree(fsio.join(out, STAGE_DIR))  # the rejections live on as hard links (or copies) in OUT
    print(format_host_summary(host_summary(out)))
