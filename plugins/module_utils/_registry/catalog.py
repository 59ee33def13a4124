# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Listing (GET /v2/NAME/tags/list, GET /v2/_catalog): names and tags, paged with n and last.

May import _errors, _format, _storage and the rest of _registry.
"""

from __future__ import annotations

from typing import Dict, List, Tuple
from urllib.parse import quote

from .routes import ApiError, MAX_PAGE, Response


class Listings:
    """Tag lists and the catalog, paged as the distribution spec says; a part of RegistryApi (api.py)."""

    @staticmethod
    def _page(items: List[str], query: Dict[str, str]) -> Tuple[List[str], bool]:
        last = query.get("last")
        if last:
            items = [item for item in items if item > last]
        n = query.get("n")
        if n is None or n == "":
            return items, False
        if not n.isdigit():
            raise ApiError(400, "PAGINATION_NUMBER_INVALID", "n must be a number, got %r" % n[:50])
        count = min(int(n), MAX_PAGE)
        return items[:count], len(items) > count

    def _tags(self, names: List[str], query: Dict[str, str], head: bool) -> Response:
        for name in names if self._holds_images() else ():
            tags = sorted(ref.tag for ref in self.repo.list_targets(name, malformed={}))     # served: the readable ones
            if tags:
                page, more = self._page(tags, query)
                extra = []
                if more and page:
                    extra.append(("Link", '</v2/%s/tags/list?n=%s&last=%s>; rel="next"'
                                  % (name, query["n"], quote(page[-1]))))
                return self._json({"name": name, "tags": page}, head, extra=extra)
        raise ApiError(404, "NAME_UNKNOWN", "repository %s is not on this remote" % names[-1])

    def _catalog(self, query: Dict[str, str], head: bool) -> Response:
        names = sorted({ref.name for ref in self.repo.list_targets(malformed={})}) if self._holds_images() else []
        page, more = self._page(names, query)
        extra = []
        if more and page:
            extra.append(("Link", '</v2/_catalog?n=%s&last=%s>; rel="next"' % (query["n"], quote(page[-1]))))
        return self._json({"repositories": page}, head, extra=extra)
