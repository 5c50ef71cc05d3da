# (name, lines, source_end, block_end, series_end) for consecutive lines of one sample name.
Stretch = tuple[bytes, int, int, int, int]

def normalize_lines(
    body: bytes,
    start: int,
    end: int,
    added_label: bytes | None,
    label_name: bytes,
    openmetrics: bool,
    output_openmetrics: bool,
    /,
) -> tuple[int, int, bytes, bytes, tuple[Stretch, ...]]: ...
