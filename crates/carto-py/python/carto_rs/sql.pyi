import io
from typing import (
    Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
    Tuple, TypedDict, Union,
)

from .auth import APIKeyAuthClient

SQL_API_URL: str
SQL_BATCH_API_URL: str
MAX_GET_QUERY_LEN: int
DEFAULT_CHUNK_SIZE: int
DEFAULT_COMPRESSION_LEVEL: int
BATCH_JOBS_PENDING_STATUSES: List[str]
BATCH_JOBS_DONE_STATUSES: List[str]
BATCH_JOBS_FAILED_STATUSES: List[str]
BATCH_JOBS_FINISHED_STATUSES: List[str]
BATCH_READ_STATUS_AFTER_SECONDS: float

class CopyResult(TypedDict):
    time: float
    total_rows: int

#: Called with the amount done since its last call (bytes, or rows for DataFrames and
#: arrays): ``tqdm(...).update`` fits.
Progress = Callable[[int], Any]
#: A column name of geometries (shapely, WKB or WKT), or a (lon, lat) pair of column names.
GeometrySource = Union[str, Tuple[str, str], None]

class SQLClient:
    auth_client: APIKeyAuthClient
    api_url: str
    api_key: Optional[str]
    username: Optional[str]
    base_url: str
    def __init__(self, auth_client: APIKeyAuthClient, api_version: str = ...) -> None: ...
    def send(
        self,
        sql: str,
        parse_json: bool = ...,
        do_post: bool = ...,
        format: Optional[str] = ...,
        **request_args: Any,
    ) -> Any: ...

class BatchSQLClient:
    client: APIKeyAuthClient
    api_url: str
    api_key: Optional[str]
    def __init__(self, client: APIKeyAuthClient, api_version: str = ...) -> None: ...
    def update_from_dict(self, data_dict: Mapping[str, Any]) -> None: ...
    def send(
        self,
        url: str,
        http_method: str,
        json_body: Optional[Dict[str, Any]] = ...,
        http_header: Optional[Dict[str, str]] = ...,
    ) -> Any: ...
    def create(self, sql_query: Union[str, Sequence[str]]) -> Dict[str, Any]: ...
    def create_and_wait_for_completion(
        self, sql_query: Union[str, Sequence[str]]
    ) -> Dict[str, Any]: ...
    def read(self, job_id: str) -> Dict[str, Any]: ...
    def update(self, job_id: str, sql_query: Union[str, Sequence[str]]) -> Dict[str, Any]: ...
    def cancel(self, job_id: str) -> str: ...

class CopyToStream(io.RawIOBase):
    def readinto(self, buffer: Any) -> int: ...

class CopyToResponse:
    status_code: int
    raw: CopyToStream
    headers: Mapping[str, str]
    def iter_content(
        self, chunk_size: Optional[int] = ..., decode_unicode: bool = ...
    ) -> Iterator[Union[bytes, str]]: ...
    def __iter__(self) -> Iterator[bytes]: ...
    @property
    def content(self) -> bytes: ...
    def close(self) -> None: ...
    def __enter__(self) -> "CopyToResponse": ...
    def __exit__(self, *exc: Any) -> None: ...

class CopySQLClient:
    client: APIKeyAuthClient
    api_url: str
    api_key: Optional[str]
    def __init__(self, client: APIKeyAuthClient, api_version: str = ...) -> None: ...
    def copyfrom(
        self,
        query: str,
        iterable_data: Iterable[Union[bytes, bytearray, memoryview, str]],
        compress: bool = ...,
        compression_level: int = ...,
        progress: Optional[Progress] = ...,
    ) -> CopyResult: ...
    def copyfrom_file_object(
        self,
        query: str,
        file_object: BinaryIO,
        compress: bool = ...,
        compression_level: int = ...,
        progress: Optional[Progress] = ...,
    ) -> CopyResult: ...
    def copyfrom_file_path(
        self,
        query: str,
        path: str,
        compress: bool = ...,
        compression_level: int = ...,
        progress: Optional[Progress] = ...,
    ) -> CopyResult: ...
    def copyto(self, query: str) -> CopyToResponse: ...
    def copyto_file_object(self, query: str, file_object: BinaryIO) -> None: ...
    def copyto_file_path(self, query: str, path: str, append: bool = ...) -> None: ...
    def copyto_stream(self, query: str) -> CopyToStream: ...
    def copyfrom_dataframe(
        self,
        df: Any,
        table: str,
        create: bool = ...,
        geometry: GeometrySource = ...,
        srid: int = ...,
        compress: bool = ...,
        progress: Optional[Progress] = ...,
        chunk_rows: int = ...,
    ) -> CopyResult: ...
    def copyfrom_arrays(
        self,
        arrays: Any,
        table: str,
        create: bool = ...,
        geometry: GeometrySource = ...,
        srid: int = ...,
        compress: bool = ...,
        progress: Optional[Progress] = ...,
        chunk_rows: int = ...,
    ) -> CopyResult: ...
    def copyto_dataframe(self, query: str, **read_csv_args: Any) -> Any: ...
