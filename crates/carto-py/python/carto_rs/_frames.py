"""DataFrames and numpy arrays into PostgreSQL's binary COPY format.

Each column is converted once to the representation its target column type needs (from the
table when it exists, from the data's types when ``create=True``), then encoded in Rust a
slice of rows at a time and streamed: the upload never holds more than one slice of
encoded rows.
"""

import numpy as np

from . import _native
from .exceptions import CartoException

# PostgreSQL counts timestamps from 2000-01-01, numpy from 1970-01-01.
_PG_EPOCH_MICROSECONDS = 946_684_800_000_000
_PG_EPOCH_DAYS = 10_957

_FIXED_WIDTH = {"int2": 2, "int4": 4, "int8": 8, "float4": 4, "float8": 8, "bool": 1}
_TEXT_TYPES = {"text", "varchar", "bpchar", "name", "json", "citext"}
_SUPPORTED = "smallint, integer, bigint, real, double precision, boolean, text, varchar, " \
    "json, bytea, date, timestamp, timestamptz and geometry"


def _ident(name):
    return '"' + name.replace('"', '""') + '"'


def _literal(text):
    return "'" + text.replace("'", "''") + "'"


class _Column:
    """One column: its values as a 1-D numpy array and where they are missing."""

    def __init__(self, name, values, missing=None, geometry=False, utc=False):
        self.name = name
        self.values = values
        self.missing = missing if missing is not None and missing.any() else None
        self.geometry = geometry
        self.utc = utc


class _Point:
    """``the_geom`` from a longitude and a latitude column."""

    name = "the_geom"
    geometry = True

    def __init__(self, lon, lat):
        # Copies: NULL points are written into them, and a frame's arrays may be read-only.
        self.lon = np.array(lon.values, dtype=np.float64)
        self.lat = np.array(lat.values, dtype=np.float64)
        for part in (lon, lat):
            if part.missing is not None:
                # A missing coordinate is a NULL point (NaN is the encoder's NULL).
                (self.lon if part is lon else self.lat)[part.missing] = np.nan


def _is_shapely(value):
    return hasattr(value, "geom_type") and hasattr(value, "wkb")


def _first_present(column):
    values = column.values
    if column.missing is not None:
        present = np.flatnonzero(~column.missing)
        return values[present[0]] if len(present) else None
    return values[0] if len(values) else None


def _frame_columns(df):
    import pandas as pd

    columns = []
    for name in df.columns:
        series = df[name]
        missing = series.isna().to_numpy()
        dtype = series.dtype
        if getattr(dtype, "name", "") == "geometry":
            columns.append(_Column(str(name), np.asarray(series.array, dtype=object), missing,
                                   geometry=True))
        elif pd.api.types.is_bool_dtype(dtype):
            columns.append(_Column(str(name), series.to_numpy(dtype=bool, na_value=False),
                                   missing))
        elif pd.api.types.is_integer_dtype(dtype):
            numpy_dtype = getattr(dtype, "numpy_dtype", dtype)
            columns.append(_Column(str(name), series.to_numpy(dtype=numpy_dtype, na_value=0),
                                   missing))
        elif pd.api.types.is_float_dtype(dtype):
            numpy_dtype = getattr(dtype, "numpy_dtype", dtype)
            columns.append(_Column(str(name),
                                   series.to_numpy(dtype=numpy_dtype, na_value=np.nan),
                                   missing))
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            utc = getattr(dtype, "tz", None) is not None
            if utc:
                series = series.dt.tz_convert("UTC").dt.tz_localize(None)
            columns.append(_Column(str(name), series.to_numpy(dtype="datetime64[us]"), missing,
                                   utc=utc))
        else:
            columns.append(_Column(str(name), series.to_numpy(dtype=object), missing))
    return columns


def _array_columns(arrays):
    if isinstance(arrays, np.ndarray):
        if arrays.dtype.names is None:
            raise CartoException("a numpy array to upload must be structured (named fields); "
                                 "or pass a dict of column name to array")
        arrays = {name: arrays[name] for name in arrays.dtype.names}
    columns = []
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.ndim != 1:
            raise CartoException(f"column {name!r} is not 1-D (shape {values.shape})")
        if values.dtype.kind == "f":
            missing = np.isnan(values)
        elif values.dtype.kind == "M":
            missing = np.isnat(values)
        elif values.dtype.kind == "O":
            missing = np.array([v is None for v in values], dtype=bool)
        else:
            missing = None
        columns.append(_Column(str(name), values, missing))
    lengths = {len(c.values) for c in columns}
    if len(lengths) > 1:
        raise CartoException(f"columns of different lengths: {sorted(lengths)}")
    return columns


def _pick_geometry(columns, geometry):
    """Turns the chosen geometry column(s) into ``the_geom``."""
    by_name = {c.name: c for c in columns}
    if geometry is None:
        return columns
    if isinstance(geometry, (tuple, list)):
        if len(geometry) != 2:
            raise CartoException("geometry=(lon, lat) takes two column names")
        lon, lat = (by_name.get(name) for name in geometry)
        if lon is None or lat is None:
            raise CartoException(f"no columns {geometry[0]!r} and {geometry[1]!r} for points")
        rest = [c for c in columns if c.name not in geometry and c.name != "the_geom"]
        return rest + [_Point(lon, lat)]
    chosen = by_name.get(geometry)
    if chosen is None:
        raise CartoException(f"no column {geometry!r} for the geometry")
    chosen.geometry = True
    rest = [c for c in columns if c.name not in (geometry, "the_geom")]
    chosen.name = "the_geom"
    return rest + [chosen]


def _created_type(column, srid):
    if column.geometry or _is_shapely(_first_present(column)):
        return f"geometry(Geometry,{srid})"
    kind, size = column.values.dtype.kind, column.values.dtype.itemsize
    if kind == "b":
        return "boolean"
    if kind == "i":
        return {1: "smallint", 2: "smallint", 4: "integer"}.get(size, "bigint")
    if kind == "u":
        return {1: "smallint", 2: "integer"}.get(size, "bigint")
    if kind == "f":
        return "real" if size <= 4 else "double precision"
    if kind == "M":
        return "timestamptz" if column.utc else "timestamp"
    if kind == "S" or isinstance(_first_present(column), (bytes, bytearray)):
        return "bytea"
    return "text"


def _table_types(copy, table):
    """The table's column types (pg_type names) by column name."""
    from .sql import SQLClient

    rows = SQLClient(copy.client).send(
        "SELECT a.attname AS name, t.typname AS type FROM pg_attribute a "
        "JOIN pg_type t ON t.oid = a.atttypid "
        f"WHERE a.attrelid = {_literal(_ident(table))}::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped")["rows"]
    return {row["name"]: row["type"] for row in rows}


def _geometries_as_ewkb(column, srid):
    values = column.values
    sample = _first_present(column)
    if isinstance(sample, (bytes, bytearray, str)) or sample is None:
        import shapely

        values = np.array(values, dtype=object)  # a copy: the frame's may be read-only
        if column.missing is not None:
            values[column.missing] = None
        if isinstance(sample, str):
            values = shapely.from_wkt(values)
        elif sample is not None:
            values = shapely.from_wkb(values)
    import shapely

    values = shapely.set_srid(np.asarray(values, dtype=object), srid)
    return list(shapely.to_wkb(values, include_srid=True))


def _texts(column):
    values = column.values.tolist()
    values = [v if v is None or type(v) is str else str(v) for v in values]
    if column.missing is not None:
        for i in np.flatnonzero(column.missing):
            values[i] = None
    return values


def _fixed(column, pg_type):
    values = column.values
    if pg_type in ("timestamp", "timestamptz"):
        if values.dtype.kind != "M":
            raise CartoException(f"column {column.name!r} is {pg_type}: send datetime64 values")
        micros = values.astype("datetime64[us]").astype(np.int64)
        return 8, micros - _PG_EPOCH_MICROSECONDS
    if pg_type == "date":
        if values.dtype.kind != "M":
            raise CartoException(f"column {column.name!r} is date: send datetime64 values")
        days = values.astype("datetime64[D]").astype(np.int64) - _PG_EPOCH_DAYS
        return 4, days.astype(np.int32)
    width = _FIXED_WIDTH[pg_type]
    if pg_type.startswith("int"):
        if values.dtype.kind not in "iub":
            raise CartoException(
                f"column {column.name!r} is {pg_type}: its values are {values.dtype}, not "
                "integers")
        target = np.dtype(f"=i{width}")
        present = values if column.missing is None else values[~column.missing]
        info = np.iinfo(target)
        if len(present) and (present.min() < info.min or present.max() > info.max):
            raise CartoException(
                f"column {column.name!r} is {pg_type}: values from {present.min()} to "
                f"{present.max()} do not fit")
        return width, values.astype(target)
    if pg_type.startswith("float"):
        if values.dtype.kind not in "iufb":
            raise CartoException(
                f"column {column.name!r} is {pg_type}: its values are {values.dtype}")
        return width, values.astype(np.dtype(f"=f{width}"))
    return 1, values.astype(bool)


class _Encoder:
    """One column's values ready for the native encoder, sliced by rows."""

    def __init__(self, column, pg_type, srid):
        self.kind = None
        if isinstance(column, _Point):
            if pg_type != "geometry":
                raise CartoException(f"the_geom is {pg_type}, not geometry")
            self.kind, self.x, self.y, self.srid = "point", column.lon, column.lat, srid
        elif pg_type == "geometry":
            self.kind, self.values = "variable", _geometries_as_ewkb(column, srid)
        elif pg_type in _TEXT_TYPES:
            self.kind, self.values = "variable", _texts(column)
        elif pg_type == "bytea":
            values = list(column.values)
            if column.missing is not None:
                for i in np.flatnonzero(column.missing):
                    values[i] = None
            self.kind, self.values = "variable", values
        elif pg_type in _FIXED_WIDTH or pg_type in ("timestamp", "timestamptz", "date"):
            self.width, fixed = _fixed(column, pg_type)
            self.kind, self.values = "fixed", np.ascontiguousarray(fixed)
            self.missing = column.missing
        else:
            raise CartoException(
                f"column {column.name!r} is {pg_type}: binary COPY from a DataFrame supports "
                f"{_SUPPORTED}")

    def slice(self, start, stop):
        if self.kind == "point":
            return ("point", self.x[start:stop].tobytes(), self.y[start:stop].tobytes(),
                    self.srid)
        if self.kind == "fixed":
            missing = None if self.missing is None else self.missing[start:stop].tobytes()
            return ("fixed", self.width, self.values[start:stop].tobytes(), missing)
        return ("variable", self.values[start:stop])


def _row_count(columns):
    for column in columns:
        return len(column.lon if isinstance(column, _Point) else column.values)
    return 0


def _upload(copy, columns, table, create, srid, compress, progress, chunk_rows):
    if not columns:
        raise CartoException("nothing to upload: no columns")
    if create:
        from .sql import SQLClient

        definitions = ", ".join(f"{_ident(c.name)} {_created_type(c, srid)}" for c in columns)
        SQLClient(copy.client).send(
            f"CREATE TABLE {_ident(table)} ({definitions}); "
            f"SELECT CDB_CartodbfyTable(current_schema, {_literal(table)})")
    types = _table_types(copy, table)
    encoders = []
    for column in columns:
        if column.name not in types:
            raise CartoException(f"table {table!r} has no column {column.name!r}")
        encoders.append(_Encoder(column, types[column.name], srid))
    rows = _row_count(columns)
    query = (f"COPY {_ident(table)} ({', '.join(_ident(c.name) for c in columns)}) "
             "FROM STDIN WITH (FORMAT binary)")

    def chunks():
        start = 0
        while True:
            stop = min(rows, start + chunk_rows)
            yield _native.encode_binary_rows([e.slice(start, stop) for e in encoders],
                                             header=start == 0, trailer=stop >= rows)
            if progress is not None and stop > start:
                progress(stop - start)
            if stop >= rows:
                return
            start = stop

    return copy.copyfrom(query, chunks(), compress=compress)


def copyfrom_frame(copy, df, table, create, geometry, srid, compress, progress, chunk_rows):
    """CopySQLClient.copyfrom_dataframe."""
    crs = getattr(df, "crs", None)
    if crs is not None and crs.to_epsg() != srid:
        df = df.to_crs(epsg=srid)
    if geometry is None and getattr(df, "crs", None) is not None or \
            (geometry is None and hasattr(df, "geometry") and hasattr(df, "set_geometry")):
        geometry = df.geometry.name
    columns = _pick_geometry(_frame_columns(df), geometry)
    return _upload(copy, columns, table, create, srid, compress, progress, chunk_rows)


def copyfrom_arrays(copy, arrays, table, create, geometry, srid, compress, progress,
                    chunk_rows):
    """CopySQLClient.copyfrom_arrays."""
    columns = _pick_geometry(_array_columns(arrays), geometry)
    return _upload(copy, columns, table, create, srid, compress, progress, chunk_rows)
