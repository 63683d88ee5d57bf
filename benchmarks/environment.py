"""What every benchmark records about where it ran, and how its rows become a markdown table."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path
from typing import Any, Sequence


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none): the machine's other work."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def describe_environment() -> dict[str, Any]:
    """Where a benchmark ran: date, CPU, GPU, library versions and the load at the start."""
    import torch
    import torchvision

    try:
        from nvidia import dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "dali": dali_version,
    }


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format) triples."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_marked_table(doc: Path, start: str, end: str, table: str) -> None:
    """Put ``table`` between the ``start`` and ``end`` marker lines of ``doc`` (appended with its
    markers where they are missing), written atomically."""
    from facekit.files import atomic_write

    block = f"{start}\n{table}\n{end}"
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write(doc, text.encode())
