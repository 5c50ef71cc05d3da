def relabel_run(
    run: bytes,
    allowed: tuple[bytes, ...],
    added_label: bytes | None,
    label_name: bytes,
    openmetrics: bool,
    /,
) -> tuple[bytes, int, int] | None: ...
def series_keys(run: bytes, openmetrics: bool, /) -> list[bytes]: ...
