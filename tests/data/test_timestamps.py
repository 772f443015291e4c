"""The one timestamp rule shared by ``icg data validate`` / the DataModule and the converters."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from icg.data.timestamps import parse_timestamps

ACCEPTED = {
    "1700000000": 1700000000,
    "1.7e9": 1700000000,
    "1700000000.0": 1700000000,
    "-5": -5,
    "2023-11-14T22:13:20Z": 1700000000,
    "2023-11-14 22:13:20": 1700000000,  # no zone: UTC
    "2023-11-14T22:13:20+08:00": 1699971200,
    "2023-11-14": 1699920000,
}
REFUSED = ["1700000000.5", "2023-11-14T22:13:20.250Z", "inf", "nan", "", "yesterday", "17:00", "2023-13-01"]


@pytest.mark.parametrize("kind", ["pandas", "arrow"])
def test_whole_seconds_or_iso_8601_and_nothing_else(kind):
    values = [*ACCEPTED, *REFUSED]
    column = pd.Series(values, dtype=object) if kind == "pandas" else pa.chunked_array([pa.array(values)])
    seconds, ok = parse_timestamps(column)
    assert ok.tolist() == [True] * len(ACCEPTED) + [False] * len(REFUSED)
    assert seconds[: len(ACCEPTED)].tolist() == list(ACCEPTED.values())


def test_typed_columns():
    seconds, ok = parse_timestamps(pa.chunked_array([pa.array([5, None, 7], pa.int64())]))
    assert seconds.tolist()[::2] == [5, 7] and ok.tolist() == [True, False, True]
    seconds, ok = parse_timestamps(pa.chunked_array([pa.array([5.0, 5.5, np.nan])]))
    assert ok.tolist() == [True, False, False] and seconds[0] == 5
    stamps = pa.array(pd.to_datetime(["2023-11-14T22:13:20", "2023-11-14T22:13:20.5"], format="ISO8601"))
    seconds, ok = parse_timestamps(stamps)
    assert ok.tolist() == [True, False] and seconds[0] == 1700000000
