"""ReadFailed: an earlier dataset's rejection parts split into candidates to fetch again and rows carried as is."""

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.fetch.retry import CARRIED, RETRY, ReadFailed
from pipeline.rejection import rejection_row
from schemas import REJECTION_SCHEMA, FileEntry, fields, reasons
from schemas.records import conform

WHY = [reasons.TIMEOUT, reasons.HTTP_4XX, reasons.TIMEOUT, reasons.DNS_ERROR, reasons.TOO_SMALL, reasons.TIMEOUT]


def test_transient_failures_are_retried_and_counted_by_reason(tmp_path, monkeypatch):
    rows = [
        rejection_row({fields.KEY: f"k{i}", fields.URL: f"http://h.test/{i}.jpg", fields.CAPTION: f"c{i}"}, why)
        for i, why in enumerate(WHY)
    ]
    (tmp_path / "rejected").mkdir()
    pq.write_table(conform(rows[:3], REJECTION_SCHEMA), tmp_path / "rejected" / "part-00000.parquet")
    pq.write_table(conform(rows[3:], REJECTION_SCHEMA), tmp_path / "rejected" / "part-00001.parquet")
    parts = [FileEntry(f"rejected/part-0000{i}.parquet", 0, "") for i in range(2)]
    made = []
    counter = Metrics.counter
    monkeypatch.setattr(Metrics, "counter", lambda ns, name: made.append((ns, name)) or counter(ns, name))
    p = TestPipeline(runner="FnApiRunner")
    out = p | ReadFailed(str(tmp_path), parts)
    assert_that(out[RETRY] | beam.Map(lambda c: c[fields.KEY]), equal_to(["k0", "k2", "k3", "k5"]), label="retry")
    assert_that(out[CARRIED] | beam.Map(lambda r: r[fields.KEY]), equal_to(["k1", "k4"]), label="carried")
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("retry"))["counters"]
    assert {c.key.metric.name: c.committed for c in counters} == {reasons.TIMEOUT: 3, reasons.DNS_ERROR: 1}
    assert sorted(m for m in made if m[0] == "retry") == [("retry", reasons.DNS_ERROR), ("retry", reasons.TIMEOUT)]
