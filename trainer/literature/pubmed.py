"""PubMed through the NCBI E-utilities ``esearch`` endpoint (JSON), as a SearchBackend.

One request returns up to ``page_size`` PMIDs (``retstart``/``retmax`` paging) until ``k`` ids or the result
count is reached; esearch serves at most the first 9,999 records of a search, so ``k`` is capped there (the paper
uses 3,000). A per-query publication-date window becomes ``datetype=pdat`` with ``mindate``/``maxdate``.
The API key comes from ``NCBI_API_KEY`` unless given (surrounding whitespace dropped: a key read from a secret file
ends with a newline); with it NCBI allows 10 requests/s, without it 3.
"""

from __future__ import annotations

import os
from collections.abc import Generator

from ..common.redaction import excerpt, register_secret
from ..retrieval.dates import DateRange
from .http import HttpPolicy, JsonService, PagedSearch, SearchServiceError

EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
MAX_RESULTS = 9999
RATE_WITH_KEY, RATE_WITHOUT_KEY = 10.0, 3.0
# esearch needs mindate and maxdate together: an open side of a DateRange becomes these bounds.
EARLIEST, LATEST = "1700/01/01", "3000/12/31"


class PubMedSearch(PagedSearch):
    """PubMed (or another Entrez ``db``) esearch as a SearchBackend with per-query date windows.

    ``api_key``: None reads ``NCBI_API_KEY`` (``""`` means no key). ``tool``/``email`` identify the client, as
    NCBI asks (``email`` defaults to ``NCBI_EMAIL``). ``sort``: esearch's sort order (``relevance`` keeps the best
    of a large result set within ``k``). ``policy``: timeouts and retries; its rate defaults to NCBI's limit for
    the presence of a key. ``base_url`` points elsewhere (a mirror, or a test server). ``date_range``: the
    window of plain ``search`` calls (one cutoff for a whole training run); ``search_dated`` sets one per query.
    """

    path = "esearch.fcgi"
    max_k = MAX_RESULTS

    def __init__(self, *, base_url: str = EUTILS_URL, api_key: str | None = None, tool: str = "deepretrieval",
                 email: str | None = None, db: str = "pubmed", sort: str | None = "relevance",
                 page_size: int = MAX_RESULTS, policy: HttpPolicy | None = None,
                 date_range: DateRange | None = None) -> None:
        self.date_range = date_range
        given = os.environ.get("NCBI_API_KEY", "") if api_key is None else api_key
        register_secret(given)  # every form of it: httpx logs each request URL, which carries api_key=...
        self.api_key = given.strip()
        self.email = os.environ.get("NCBI_EMAIL", "") if email is None else email
        if not 1 <= page_size <= MAX_RESULTS:
            raise ValueError(f"page_size={page_size} must be within 1..{MAX_RESULTS} (esearch's retmax limit)")
        self.tool, self.db, self.sort, self.page_size = tool, db, sort, page_size
        if policy is None:
            policy = HttpPolicy(requests_per_second=RATE_WITH_KEY if self.api_key else RATE_WITHOUT_KEY)
        self.service = JsonService(name="PubMed esearch", base_url=base_url, policy=policy, secret_params=("api_key",))

    def params(self, query: str, date: DateRange | None, retstart: int, retmax: int) -> dict[str, str | int]:
        """The esearch parameters of one page."""
        params: dict[str, str | int] = {"db": self.db, "term": query, "retmode": "json", "retstart": retstart,
                                        "retmax": retmax}
        if self.sort:
            params["sort"] = self.sort
        if date is not None:
            params.update(datetype="pdat", mindate=date.start or EARLIEST, maxdate=date.end or LATEST)
        if self.tool:
            params["tool"] = self.tool
        if self.email:
            params["email"] = self.email
        if self.api_key:
            params["api_key"] = self.api_key
        return params

    def _pages(self, query: str, date: DateRange | None, k: int) -> Generator[dict, dict, list[str]]:
        ids: list[str] = []
        seen: set[str] = set()
        retstart = 0
        while len(ids) < k and retstart < MAX_RESULTS:
            params = self.params(query, date, retstart, min(self.page_size, k - len(ids), MAX_RESULTS - retstart))
            page, count = self._read(query, (yield params))
            for pmid in page:
                if pmid not in seen:  # records added between pages can shift one into the next page
                    seen.add(pmid)
                    ids.append(pmid)
            retstart += len(page)
            if not page or retstart >= count:
                break
        return ids[:k]

    def _read(self, query: str, payload: dict) -> tuple[list[str], int]:
        result = payload.get("esearchresult")
        if not isinstance(result, dict):
            raise SearchServiceError(f"PubMed esearch answered {query!r} without 'esearchresult' "
                                     f"(keys: {excerpt(str(sorted(payload)), 200)}); is base_url an E-utilities "
                                     "endpoint?")
        if "ERROR" in result:
            raise SearchServiceError(f"PubMed esearch rejected {query!r}: {excerpt(str(result['ERROR']), 300)}")
        try:
            return [str(pmid) for pmid in result.get("idlist", [])], int(result.get("count", 0))
        except (TypeError, ValueError):
            raise SearchServiceError(f"PubMed esearch answered {query!r} with a malformed count "
                                     f"{result.get('count')!r} or idlist") from None
