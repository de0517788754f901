"""The storage benchmark runs end to end and reports lone and concurrent store calls."""

from __future__ import annotations

import json

import pytest

from benchmarks import storage_concurrency


def test_storage_benchmark_reports_lone_and_concurrent_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    storage_concurrency.main(["--concurrency", "4", "--history", "3", "--repeats", "2", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["concurrency"] == 4
    for call in ("state", "history", "add_message"):
        alone, together = result["alone"][call], result["together"][call]
        assert 0 < alone["p50_ms"] <= alone["max_ms"]
        assert 0 < together["p50_ms"] <= together["max_ms"] <= together["wall_ms"]


def test_storage_benchmark_refuses_a_burst_of_nothing() -> None:
    with pytest.raises(SystemExit):
        storage_concurrency.main(["--concurrency", "0"])
