from __future__ import annotations

from harness.report.requestscsv import CSV_COLUMNS, csv_row
from tests.unit.report.test_exports import record


def test_csv_rows() -> None:
    row = csv_row(record(1, images=[{"width": 1}, {"width": 2}]))
    assert len(row) == len(CSV_COLUMNS) and row[CSV_COLUMNS.index("image_count")] == 2
    assert row[CSV_COLUMNS.index("status")] == "ok" and row[CSV_COLUMNS.index("error")] is None
    assert "itl_ms" not in CSV_COLUMNS and "images" not in CSV_COLUMNS
