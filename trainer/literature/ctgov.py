"""ClinicalTrials.gov API v2 ``/studies`` as a SearchBackend returning NCT ids.

Pages with ``pageSize``/``pageToken`` (``nextPageToken`` in each answer) until ``k`` ids; ``fields`` asks only for
the NCT id so answers stay small. A per-query date window becomes an Essie ``filter.advanced`` range on
``StudyFirstPostDate`` (configurable). ClinicalTrials.gov documents no numeric rate limit; the default stays
under the ~50 requests per minute it is reported to tolerate.
"""

from __future__ import annotations

from collections.abc import Generator

from ..common.redaction import excerpt
from ..retrieval.dates import DateRange, full_date
from .http import HttpPolicy, JsonService, PagedSearch, SearchServiceError

CTGOV_URL = "https://clinicaltrials.gov/api/v2/"
MAX_PAGE_SIZE = 1000
DEFAULT_RATE = 50 / 60
NCT_FIELD = "protocolSection.identificationModule.nctId"


class ClinicalTrialsSearch(PagedSearch):
    """ClinicalTrials.gov studies search (``query.term``) with per-query date windows.

    ``page_size``: studies per request (the API allows up to 1,000). ``date_field``: the study date a
    :class:`DateRange` limits. ``max_k``: how many ids a query may page through at most. ``date_range``: the
    window of plain ``search`` calls; ``search_dated`` sets one per query.
    """

    path = "studies"
    default_rate = DEFAULT_RATE

    def __init__(self, *, base_url: str = CTGOV_URL, page_size: int = MAX_PAGE_SIZE,
                 date_field: str = "StudyFirstPostDate", max_k: int = 10_000, policy: HttpPolicy | None = None,
                 date_range: DateRange | None = None) -> None:
        self.date_range = date_range
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size={page_size} must be within 1..{MAX_PAGE_SIZE} (the API's pageSize limit)")
        if not date_field.isidentifier():
            raise ValueError(f"date_field={date_field!r} must be a study field name such as StudyFirstPostDate")
        self.page_size, self.date_field, self.max_k = page_size, date_field, max_k
        policy = policy or HttpPolicy(requests_per_second=DEFAULT_RATE)
        self.service = JsonService(name="ClinicalTrials.gov", base_url=base_url, policy=policy)

    def params(self, query: str, date: DateRange | None, page_size: int, token: str | None) -> dict[str, str | int]:
        """The /studies parameters of one page."""
        params: dict[str, str | int] = {"query.term": query, "pageSize": page_size, "fields": NCT_FIELD,
                                        "format": "json"}
        if date is not None:
            start = full_date(date.start, end=False) if date.start else "MIN"
            end = full_date(date.end, end=True) if date.end else "MAX"
            params["filter.advanced"] = f"AREA[{self.date_field}]RANGE[{start},{end}]"
        if token:
            params["pageToken"] = token
        return params

    def _pages(self, query: str, date: DateRange | None, k: int) -> Generator[dict, dict, list[str]]:
        ids: list[str] = []
        seen: set[str] = set()
        token: str | None = None
        page_size = min(self.page_size, k)  # constant across pages: the token continues the same listing
        while len(ids) < k:
            page, token = self._read(query, (yield self.params(query, date, page_size, token)))
            for nct_id in page:
                if nct_id not in seen:
                    seen.add(nct_id)
                    ids.append(nct_id)
            if not page or not token:
                break
        return ids[:k]

    def _read(self, query: str, payload: dict) -> tuple[list[str], str | None]:
        studies = payload.get("studies")
        if not isinstance(studies, list):
            raise SearchServiceError(f"ClinicalTrials.gov answered {query!r} without a 'studies' list "
                                     f"(keys: {excerpt(str(sorted(payload)), 200)}); is base_url the API v2 root?")
        ids = []
        for study in studies:
            try:
                ids.append(str(study["protocolSection"]["identificationModule"]["nctId"]))
            except (KeyError, TypeError):
                raise SearchServiceError(f"ClinicalTrials.gov answered {query!r} with a study lacking "
                                         f"{NCT_FIELD}: {_shown(study)}") from None
        token = payload.get("nextPageToken")
        return ids, (str(token) if token else None)


def _shown(value: object) -> str:
    """A short, masked excerpt of a piece of an answer (``repr`` of a nested one can recurse past the limit)."""
    try:
        return excerpt(str(value), 200)
    except RecursionError:
        return f"a {type(value).__name__} nested too deep to show"
