"""The tile sweep's table writer and the serving path's reader agree (no GPU needed).

``benchmarks/nf4_tiles.py --write-table`` is how a GPU model gets its tilings; this checks
that what it writes is what :func:`core.generation.local.nf4_triton.choose_tiling` then picks,
that other GPUs' entries survive a rewrite, and that "bitsandbytes was faster" survives as
a null config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.nf4_tiles import write_table
from core.generation.local.nf4_triton import TileConfig, choose_tiling, read_tuned_tables


def result(rows: int, fastest: TileConfig | None) -> dict[str, Any]:
    """One sweep result as ``sweep_shape`` reports it (only what the table keeps)."""
    return {
        "out_features": 1024,
        "in_features": 4096,
        "blocksize": 64,
        "rows": rows,
        "bitsandbytes_us": 6.4,
        "fastest": None if fastest is None else fastest.as_dict(),
        "best": [{"us": 8.7 if fastest is None else 5.0}],
    }


def test_a_written_table_is_what_the_serving_path_picks(tmp_path: Path) -> None:
    path = tmp_path / "tiles.json"
    other = TileConfig(block_n=64, groups=2, split_k=2)
    path.write_text(
        json.dumps(
            {
                "gpus": {
                    "GPU B": [
                        {
                            "out_features": 1024,
                            "in_features": 4096,
                            "blocksize": 64,
                            "rows": 32,
                            "config": other.as_dict(),
                        }
                    ]
                }
            }
        )
    )
    tuned = TileConfig(block_n=128, groups=1, split_k=16, num_stages=3)
    results = [result(1, None), result(32, tuned), result(48, tuned)]  # 48: not a bucket
    write_table(str(path), "GPU A", results, "python -m benchmarks.nf4_tiles --write-table x")
    tables = read_tuned_tables(path)
    assert sorted(tables) == ["GPU A", "GPU B"]
    assert sorted(key[3] for key in tables["GPU A"]) == [1, 32]  # the row buckets kept
    assert choose_tiling(1, 1024, 4096, 64, "GPU A", tables) is None
    assert choose_tiling(20, 1024, 4096, 64, "GPU A", tables) == tuned
    assert choose_tiling(32, 1024, 4096, 64, "GPU B", tables) == other
    assert "written by: python -m benchmarks.nf4_tiles" in json.loads(path.read_text())["about"]


def test_a_missing_table_means_no_tuned_gpus(tmp_path: Path) -> None:
    assert read_tuned_tables(tmp_path / "absent.json") == {}
