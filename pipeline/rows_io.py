"""Writing rows of one of our schemas to Parquet from Beam (candidates, page logs, rejections)."""

import apache_beam as beam
import pyarrow as pa

from pipeline.batches import rows_table


class WriteRows(beam.PTransform):
    """Dict rows -> `{prefix}-SSSSS-of-NNNNN.parquet` of `schema`; Beam writes to a temp dir and renames on finish.

    `batched=True` takes Rows batches (pipeline.batches) and writes each as one Arrow table, ~20x cheaper a row.
    Two writers in one job must not have prefixes where one is the other plus "-...": on finishing, a sink deletes
    files that match its prefix + "-*-of-*", which would take the other writer's output ("rejected" would delete
    "rejected-source-00000-of-00001.parquet").
    """

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int = 0, batched: bool = False):
        super().__init__()
        self.prefix = prefix
        self.schema = schema
        self.num_shards = num_shards
        self.batched = batched

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        names, schema = self.schema.names, self.schema
        common = {"file_name_suffix": ".parquet", "num_shards": self.num_shards, "codec": "zstd"}
        if self.batched:
            tables = rows | "Table" >> beam.Map(lambda batch: rows_table(batch, schema))  # no hint: Rows is not list
            return tables | "Write" >> beam.io.WriteToParquetBatched(self.prefix, schema, **common)
        conformed = rows | "Conform" >> beam.Map(lambda r: {n: r.get(n) for n in names})
        return conformed | "Write" >> beam.io.WriteToParquet(self.prefix, schema, **common)
