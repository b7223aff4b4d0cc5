"""A per-query publication-date window, and how a search call carries it.

The paper limits each training search to records published before the review it reproduces, so the model cannot
learn from later literature. A SearchBackend call has no room for that, so engines that can filter by date add
``search_dated(queries, k, dates)`` / ``asearch_dated`` (one :class:`DateRange` or None per query), and the reward
calls :func:`search_with_dates`, which uses it when a row has a date and fails clearly when the engine cannot.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

_DATE = re.compile(r"^(\d{4})(?:[/-](\d{1,2})(?:[/-](\d{1,2}))?)?$")


def normalize_date(value: str, *, field: str = "date") -> str:
    """``YYYY``, ``YYYY/MM`` or ``YYYY/MM/DD`` (``-`` separators also accepted) as PubMed writes it: slashes."""
    text = str(value).strip()
    match = _DATE.match(text) if len(text) <= 10 else None  # YYYY/MM/DD is 10 characters: nothing longer is a date
    if not match:
        raise ValueError(f"{field}={text[:40]!r} is not a date: write YYYY, YYYY/MM or YYYY/MM/DD (or with '-')")
    year, month, day = match.groups()
    parts = [year]
    if month is not None:
        if not 1 <= int(month) <= 12:
            raise ValueError(f"{field}={value!r}: month {month} is not 1-12")
        parts.append(f"{int(month):02d}")
        if day is not None:
            if not 1 <= int(day) <= calendar.monthrange(int(year), int(month))[1]:
                raise ValueError(f"{field}={value!r}: day {day} does not exist in {year}/{month}")
            parts.append(f"{int(day):02d}")
    return "/".join(parts)


def full_date(value: str, *, end: bool) -> str:
    """A normalized date as ``YYYY-MM-DD``: the first day of its period, or the last when ``end``."""
    parts = [int(part) for part in value.split("/")]
    year = parts[0]
    month = parts[1] if len(parts) > 1 else (12 if end else 1)
    day = parts[2] if len(parts) > 2 else (calendar.monthrange(year, month)[1] if end else 1)
    return f"{year:04d}-{month:02d}-{day:02d}"


@dataclass(frozen=True)
class DateRange:
    """Publication dates from ``start`` to ``end`` inclusive; either side may be open (None)."""

    start: str | None = None
    end: str | None = None

    def __post_init__(self) -> None:
        if self.start is None and self.end is None:
            raise ValueError("DateRange needs a start or an end date (use None instead of an open range)")
        if self.start is not None:
            object.__setattr__(self, "start", normalize_date(self.start, field="start"))
        if self.end is not None:
            object.__setattr__(self, "end", normalize_date(self.end, field="end"))
        if self.start and self.end and full_date(self.start, end=False) > full_date(self.end, end=True):
            raise ValueError(f"DateRange start={self.start!r} is after end={self.end!r}; swap them")

    @classmethod
    def before(cls, date: str) -> DateRange:
        """Everything published up to ``date`` (the cutoff that keeps a review's later literature out)."""
        return cls(end=date)


@runtime_checkable
class DatedSearchBackend(Protocol):
    def search_dated(self, queries: Sequence[str], k: int,
                     dates: Sequence[DateRange | None]) -> list[list[str]]: ...

    async def asearch_dated(self, queries: Sequence[str], k: int,
                            dates: Sequence[DateRange | None]) -> list[list[str]]: ...


def _check(backend, queries: Sequence[str], dates: Sequence[DateRange | None] | None) -> bool:
    """True when the call needs ``search_dated``."""
    if dates is None or all(date is None for date in dates):
        return False
    if len(dates) != len(queries):
        raise ValueError(f"got {len(dates)} date ranges for {len(queries)} queries; give one (or None) per query")
    if not isinstance(backend, DatedSearchBackend):
        raise ValueError(f"{type(backend).__name__} cannot filter by publication date; use an engine with "
                         "search_dated (PubMedSearch, ClinicalTrialsSearch) or drop the dates from the dataset")
    return True


def search_with_dates(backend, queries: Sequence[str], k: int,
                      dates: Sequence[DateRange | None] | None = None) -> list[list[str]]:
    """``backend.search`` with a per-query date window where given (what the literature reward calls)."""
    if _check(backend, queries, dates):
        return backend.search_dated(queries, k, dates)
    return backend.search(queries, k)


async def asearch_with_dates(backend, queries: Sequence[str], k: int,
                             dates: Sequence[DateRange | None] | None = None) -> list[list[str]]:
    if _check(backend, queries, dates):
        return await backend.asearch_dated(queries, k, dates)
    return await backend.asearch(queries, k)
