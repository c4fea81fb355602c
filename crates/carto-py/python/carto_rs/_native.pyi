# The Rust extension module (crates/carto-py/src/lib.rs); internal to carto_rs.
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

__version__: str

class NativeError(Exception): ...

class CopyToReader:
    def next_chunk(self) -> Optional[bytes]: ...
    def close(self) -> None: ...

class Client:
    def __init__(self, base_url: str, api_key: str, user_agent: str, verify: bool = ...) -> None: ...
    @property
    def username(self) -> str: ...
    def request(
        self,
        method: str,
        path: str,
        query: List[Tuple[str, str]],
        form: Optional[List[Tuple[str, str]]] = ...,
        json: Optional[str] = ...,
    ) -> Tuple[int, List[Tuple[str, str]], bytes]: ...
    def copy_from(
        self,
        sql: str,
        chunks: Iterable[Any],
        compress: bool = ...,
        level: int = ...,
        progress: Optional[Callable[[int], Any]] = ...,
    ) -> Tuple[int, float]: ...
    def copy_to(self, sql: str, compress: bool = ...) -> CopyToReader: ...

def encode_binary_rows(
    columns: Sequence[Tuple[Any, ...]], header: bool = ..., trailer: bool = ...
) -> bytes: ...
