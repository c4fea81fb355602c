"""CARTO's SQL API: queries, batch jobs and COPY (carto-python's ``carto.sql``).

The COPY transfers run in Rust (carto-rs's SDK): gzip, HTTP and waiting on the network
happen with the GIL released; an upload reads its iterable one chunk at a time.
"""

import io
import time

from . import _native
from ._http import Headers, Response
from .exceptions import CartoException, CartoRateLimitException, api_error

SQL_API_URL = "api/{api_version}/sql"
SQL_BATCH_API_URL = "api/{api_version}/sql/job/"

#: Queries at least this long are POSTed even when ``do_post=False``.
MAX_GET_QUERY_LEN = 1024
#: Bytes per read of a file object (``copyfrom_file_object``) and per block written by
#: ``copyto_file_object``.
DEFAULT_CHUNK_SIZE = 8 * 1024
#: gzip level of uploads: 1 is the fastest end to end.
DEFAULT_COMPRESSION_LEVEL = 1

BATCH_JOBS_PENDING_STATUSES = ["pending", "running"]
BATCH_JOBS_DONE_STATUSES = ["done"]
BATCH_JOBS_FAILED_STATUSES = ["failed", "canceled", "unknown"]
BATCH_JOBS_FINISHED_STATUSES = BATCH_JOBS_DONE_STATUSES + BATCH_JOBS_FAILED_STATUSES
#: Seconds between reads in ``create_and_wait_for_completion`` (read at every loop).
BATCH_READ_STATUS_AFTER_SECONDS = 2

# Reads of a file object by copyfrom_file_object: bigger than carto-python's 8 KiB, since
# each read costs a Python call and the Rust side merges them anyway.
_FILE_READ_SIZE = 256 * 1024


class SQLClient:
    """Queries through ``/api/v2/sql``."""

    def __init__(self, auth_client, api_version="v2"):
        self.auth_client = auth_client
        self.api_url = SQL_API_URL.format(api_version=api_version)
        self.api_key = getattr(auth_client, "api_key", None)
        self.username = getattr(auth_client, "username", None)
        self.base_url = auth_client.base_url

    def send(self, sql, parse_json=True, do_post=True, format=None, **request_args):
        """Runs ``sql``; returns the JSON answer (a dict), or bytes for formats other than
        json/geojson or when not ``parse_json``. GET when ``do_post`` is False and the query
        is short, else a form POST. Extra keyword arguments are sent as parameters
        (e.g. ``skipfields``). Raises CartoException (CartoRateLimitException on 429)."""
        try:
            params = {"q": sql}
            if format:
                params["format"] = format
                if format not in ("json", "geojson"):
                    parse_json = False
            params.update(request_args)
            if do_post is False and len(sql) < MAX_GET_QUERY_LEN:
                response = self.auth_client.send(self.api_url, "GET", params=params)
            else:
                response = self.auth_client.send(self.api_url, "POST", data=params)
            return self.auth_client.get_response_data(response, parse_json)
        except CartoRateLimitException:
            raise
        except Exception as error:
            raise CartoException(error) from error


class BatchSQLClient:
    """Batch jobs through ``/api/v2/sql/job``."""

    def __init__(self, client, api_version="v2"):
        self.client = client
        self.api_url = SQL_BATCH_API_URL.format(api_version=api_version)
        self.api_key = getattr(client, "api_key", None)

    def update_from_dict(self, data_dict):
        """Copies a job's fields onto this object."""
        for key, value in data_dict.items():
            setattr(self, key, value)
        if "item_queue_id" in data_dict:
            self.id = data_dict["item_queue_id"]

    def send(self, url, http_method, json_body=None, http_header=None):
        """One request of the batch API; returns its JSON."""
        try:
            response = self.client.send(url, http_method=http_method, headers=http_header,
                                        json=json_body)
            return self.client.get_response_data(response)
        except CartoRateLimitException:
            raise
        except Exception as error:
            raise CartoException(error) from error

    def create(self, sql_query):
        """Queues a job (one query or a list); returns the job."""
        return self.send(self.api_url, "POST", json_body={"query": sql_query})

    def create_and_wait_for_completion(self, sql_query):
        """Queues a job and reads it every ``BATCH_READ_STATUS_AFTER_SECONDS`` while it is
        pending or running; returns it, or raises CartoException if it failed."""
        job = self.create(sql_query)
        while job and job["status"] in BATCH_JOBS_PENDING_STATUSES:
            time.sleep(BATCH_READ_STATUS_AFTER_SECONDS)
            job = self.read(job["job_id"])
        if job["status"] in BATCH_JOBS_FAILED_STATUSES:
            raise CartoException(f"Batch SQL job failed with result: {job}")
        return job

    def read(self, job_id):
        """The job ``job_id``."""
        return self.send(self.api_url + job_id, "GET")

    def update(self, job_id, sql_query):
        """Replaces a pending job's query; returns the job."""
        return self.send(self.api_url + job_id, "PUT", json_body={"query": sql_query})

    def cancel(self, job_id):
        """Cancels a job; returns its status (``'done'`` if it had already finished)."""
        try:
            job = self.send(self.api_url + job_id, "DELETE")
        except CartoException as error:
            cause = error.args[0]
            if cause.args and "Cannot set status from done to cancelled" in cause.args[0]:
                return "done"
            raise
        return job["status"]


def _copy_error(error):
    """The CartoException for a NativeError of a COPY."""
    message, status, errors, rate_limit = error.args
    if status == 429 and rate_limit is not None and rate_limit[3] is not None:
        limit, remaining, reset, retry_after = rate_limit
        headers = Headers([("Carto-Rate-Limit-Limit", str(limit or 0)),
                           ("Carto-Rate-Limit-Remaining", str(remaining or 0)),
                           ("Carto-Rate-Limit-Reset", str(reset or 0)),
                           ("Retry-After", str(retry_after))])
        return CartoRateLimitException(Response(429, headers, message.encode()))
    if status is not None:
        return CartoException(api_error(status, _error_body(errors, message)))
    return CartoException(message)


def _error_body(errors, message):
    import json

    return json.dumps({"error": errors or [message]}).encode()


class CopyToStream(io.RawIOBase):
    """The data of a ``COPY ... TO STDOUT`` as a readable raw binary stream; reading past a
    failure raises CartoException."""

    def __init__(self, reader):
        super().__init__()
        self._reader = reader
        self._pending = b""

    def readable(self):
        return True

    def _next_chunk(self):
        try:
            return self._reader.next_chunk()
        except _native.NativeError as error:
            raise _copy_error(error) from None

    def readinto(self, buffer):
        if not self._pending:
            chunk = self._next_chunk()
            if chunk is None:
                return 0
            self._pending = chunk
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def readall(self):
        parts = [self._pending]
        self._pending = b""
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return b"".join(parts)
            parts.append(chunk)

    def close(self):
        self._reader.close()
        super().close()


class CopyToResponse:
    """What ``copyto`` returns, in place of carto-python's streamed ``requests.Response``:
    iterate it (or ``iter_content(n)``) for the chunks, or read ``raw``."""

    status_code = 200

    def __init__(self, reader):
        self.raw = CopyToStream(reader)
        self.headers = Headers()

    def iter_content(self, chunk_size=DEFAULT_CHUNK_SIZE, decode_unicode=False):
        """The data in chunks of at most ``chunk_size`` bytes (None: as they arrive)."""
        while True:
            if chunk_size is None:
                chunk = self.raw.read(_FILE_READ_SIZE)
            else:
                chunk = self.raw.read(chunk_size)
            if not chunk:
                return
            yield chunk.decode() if decode_unicode else chunk

    def __iter__(self):
        while True:
            chunk = self.raw._next_chunk()
            if chunk is None:
                return
            yield chunk

    @property
    def content(self):
        """All the data."""
        return self.raw.readall()

    def close(self):
        """Stops the download."""
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _file_chunks(file_object, size):
    while True:
        data = file_object.read(size)
        if not data:
            return
        yield data


class CopySQLClient:
    """Bulk transfers with PostgreSQL's COPY through ``/sql/copyfrom`` and ``/sql/copyto``.

    Beyond carto-python: ``copyfrom_dataframe``, ``copyfrom_arrays``, ``copyto_dataframe``
    and ``progress=`` callbacks (called with the bytes sent since the last call, as
    ``tqdm.update`` wants).
    """

    def __init__(self, client, api_version="v2"):
        self.client = client
        self.api_url = SQL_API_URL.format(api_version=api_version)
        self.api_key = getattr(client, "api_key", None)

    def copyfrom(self, query, iterable_data, compress=True,
                 compression_level=DEFAULT_COMPRESSION_LEVEL, progress=None):
        """Streams the chunks of ``iterable_data`` (bytes or str) into ``COPY ... FROM
        STDIN``; returns ``{"time": seconds, "total_rows": n}``. Nothing is committed if it
        fails or is interrupted (Ctrl-C raises KeyboardInterrupt and aborts the upload)."""
        try:
            rows, seconds = self.client._native.copy_from(
                query, iterable_data, compress, compression_level, progress)
        except _native.NativeError as error:
            raise _copy_error(error) from None
        except CartoException:
            raise
        except Exception as error:
            raise CartoException(error) from error
        return {"time": seconds, "total_rows": rows}

    def copyfrom_file_object(self, query, file_object, compress=True,
                             compression_level=DEFAULT_COMPRESSION_LEVEL, progress=None):
        """``copyfrom`` from a readable file object, read a chunk at a time."""
        return self.copyfrom(query, _file_chunks(file_object, _FILE_READ_SIZE), compress,
                             compression_level, progress)

    def copyfrom_file_path(self, query, path, compress=True,
                           compression_level=DEFAULT_COMPRESSION_LEVEL, progress=None):
        """``copyfrom`` from the file at ``path``."""
        with open(path, "rb") as file_object:
            return self.copyfrom_file_object(query, file_object, compress, compression_level,
                                             progress)

    def copyto(self, query):
        """Starts ``COPY ... TO STDOUT``; returns a response to iterate. A 4xx raises
        ``CartoException("{status} Client Error: {message}")``."""
        try:
            reader = self.client._native.copy_to(query)
        except _native.NativeError as error:
            message, status, errors, _ = error.args
            if status is not None and 400 <= status < 500 and status != 429:
                reason = errors[0] if errors else message
                raise CartoException(f"{status} Client Error: {reason}") from None
            raise _copy_error(error) from None
        return CopyToResponse(reader)

    def copyto_file_object(self, query, file_object):
        """Writes the output of ``COPY ... TO STDOUT`` into a writable file object."""
        for chunk in self.copyto(query):
            file_object.write(chunk)

    def copyto_file_path(self, query, path, append=False):
        """Writes the output of ``COPY ... TO STDOUT`` into the file at ``path``."""
        with open(path, "ab" if append else "wb") as file_object:
            self.copyto_file_object(query, file_object)

    def copyto_stream(self, query):
        """The output of ``COPY ... TO STDOUT`` as an ``io.RawIOBase``."""
        return self.copyto(query).raw

    def copyfrom_dataframe(self, df, table, create=False, geometry=None, srid=4326,
                           compress=True, progress=None, chunk_rows=50_000):
        """Uploads a pandas or GeoPandas DataFrame into ``table`` as binary COPY (no CSV).

        ``geometry`` becomes the ``the_geom`` column: a column name (shapely geometries, WKB
        bytes or WKT text) or a ``(lon, lat)`` pair of column names; by default a
        GeoDataFrame's active geometry. ``create=True`` creates the table from the frame's
        types and cartodbfies it; otherwise the table's column types drive the encoding.
        ``progress(n)`` is called with the rows sent since its last call. Returns
        ``{"time", "total_rows"}``."""
        from . import _frames

        return _frames.copyfrom_frame(self, df, table, create, geometry, srid, compress,
                                      progress, chunk_rows)

    def copyfrom_arrays(self, arrays, table, create=False, geometry=None, srid=4326,
                        compress=True, progress=None, chunk_rows=50_000):
        """Like ``copyfrom_dataframe`` for numpy data: a structured array (its fields are
        the columns) or a mapping of column name to 1-D array."""
        from . import _frames

        return _frames.copyfrom_arrays(self, arrays, table, create, geometry, srid, compress,
                                       progress, chunk_rows)

    def copyto_dataframe(self, query, **read_csv_args):
        """The rows of a SELECT ``query`` as a pandas DataFrame (through CSV; geometries
        arrive as hex EWKB text). Extra arguments go to ``pandas.read_csv``."""
        import pandas

        stream = self.copyto_stream(
            f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)")
        with io.BufferedReader(stream, buffer_size=_FILE_READ_SIZE) as buffered:
            return pandas.read_csv(buffered, **read_csv_args)
