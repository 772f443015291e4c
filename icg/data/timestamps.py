"""The one rule for interaction timestamps, shared by the dataset reader (``icg data validate``, the DataModule) and
the PixelRec / MovieLens converters, so that a value one accepts the other accepts too.

A timestamp names a whole second, either as a number of seconds since 1970-01-01 UTC (``1700000000``; ``1.7e9`` and
``1700000000.0`` name the same second) or as an ISO-8601 date or date-time (``2023-11-14``, ``2023-11-14 22:13:20``,
``2023-11-14T22:13:20+08:00``; without a zone it is read as UTC). Everything else is refused, with its row and
value: a fraction of a second (``1700000000.5``, ``...T22:13:20.250Z``; truncating it could reorder a user's
interactions silently), text, blanks, ``inf``/``nan``. Only the order of a user's interactions matters to the splits
(ICG's stage 1 holds out each user's last interactions, as PixelRec's benchmark does), so seconds are enough.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

TIMESTAMP_RULE = (
    "a whole number of seconds since 1970 (e.g. 1700000000) or an ISO-8601 date-time with whole seconds "
    "(e.g. 2023-11-14T22:13:20Z; no zone means UTC)"
)
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
_SECOND = pd.Timedelta(1, "s")


def parse_timestamps(values: pa.ChunkedArray | pa.Array | pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per value under the rule above, and a mask of the values that follow it.

    Args:
        values: a column as read (Arrow integers, floats, timestamps or text; pandas or numpy text).

    Returns:
        ``(int64 seconds, 0 where refused; bool ok per value)``.
    """
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_integer(values.type):
            if values.null_count == 0:  # the common case: no row-sized null mask or filled copy
                return np.asarray(values, dtype=np.int64), np.ones(len(values), bool)
            ok = ~np.asarray(values.is_null(), dtype=bool)
            return np.asarray(values.fill_null(0), dtype=np.int64), ok
        if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
            values = pd.Series(values.to_pandas(), dtype=object)  # through the date-time path below
        else:
            values = values.to_numpy(zero_copy_only=False)
    series = pd.Series(np.asarray(values, dtype=object) if not isinstance(values, pd.Series) else values)
    numbers = pd.to_numeric(series, errors="coerce")
    if pd.api.types.is_integer_dtype(numbers.dtype):  # the common case: every value an integer, kept exact
        return numbers.to_numpy(np.int64), np.ones(len(series), bool)
    numbers = numbers.to_numpy(float)
    ok = np.isfinite(numbers) & (np.floor(numbers) == numbers)
    seconds = np.where(ok, numbers, 0).astype(np.int64)
    # date-times are tried only on what is not a number at all (a fraction or inf stays refused)
    unparsed = np.flatnonzero(np.isnan(numbers))
    spelled_nan = series.iloc[unparsed].astype(str).str.strip().str.lower().isin(("nan", "+nan", "-nan"))
    rest = unparsed[~spelled_nan.to_numpy(bool)]
    if len(rest):
        dates = pd.to_datetime(series.iloc[rest], format="ISO8601", utc=True, errors="coerce")
        offset = dates - _EPOCH
        whole = (dates.notna() & (offset % _SECOND == pd.Timedelta(0))).to_numpy(bool)
        seconds[rest[whole]] = (offset[whole] // _SECOND).to_numpy(np.int64)
        ok[rest[whole]] = True
    return seconds, ok
