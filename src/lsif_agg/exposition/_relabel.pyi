from collections.abc import Callable, Iterator

# (start, end, names, block, lines); names and block are None when the run was rejected.
RunItem = tuple[int, int, tuple[bytes, ...] | None, bytes | None, int]

def scan_body(
    body: bytes,
    added_label: bytes | None,
    label_name: bytes,
    openmetrics: bool,
    converting: bool,
    /,
) -> list[bytes | RunItem]: ...
def relabel_run(
    run: bytes,
    allowed: tuple[bytes, ...],
    added_label: bytes | None,
    label_name: bytes,
    openmetrics: bool,
    /,
) -> tuple[bytes, int, int] | None: ...
def series_keys(body: bytes, start: int, end: int, openmetrics: bool, /) -> list[bytes]: ...
def merge_bodies(
    bodies: tuple[bytes, ...],
    added_labels: tuple[bytes, ...],
    label_name: bytes,
    openmetrics: bool,
    converting: tuple[bool, ...],
    keep: Callable[[bytes, int], bool] | None,
    eof: bool,
    /,
) -> tuple[Exposition, tuple[int, ...], list[tuple[bytes, str]], list[int]] | int: ...

class Exposition:
    def __len__(self) -> int: ...
    def slices(self, limit: int, /) -> Iterator[bytes]: ...
    def tobytes(self) -> bytes: ...
