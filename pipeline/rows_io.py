"""Writing rows of one of our schemas to Parquet from Beam (candidates, page logs, rejections)."""

import apache_beam as beam
import pyarrow as pa


class WriteRows(beam.PTransform):
    """Dict rows -> `{prefix}-SSSSS-of-NNNNN.parquet` of `schema`; Beam writes to a temp dir and renames on finish."""

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int = 0):
        super().__init__()
        self.prefix = prefix
        self.schema = schema
        self.num_shards = num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        names = self.schema.names
        return (
            rows
            | "Conform" >> beam.Map(lambda r: {n: r.get(n) for n in names})
            | "Write"
            >> beam.io.WriteToParquet(
                self.prefix,
                self.schema,
                file_name_suffix=".parquet",
                num_shards=self.num_shards,
                codec="zstd",
            )
        )
