"""MkDocs hook: links from a docs page to a file of the repository outside docs/.

The pages link to the code they describe (`[examples/own_agent.py](../examples/own_agent.py)`), which
works where the Markdown is read in the repository. MkDocs only knows the files under docs/, so it
would report such a link as "not found", and `mkdocs build --strict` would fail on it exactly as on a
broken link between two pages. This hook takes those links out of MkDocs' hands before it checks the
page: a link whose target lies outside docs/ and exists in the repository points to the file on the
repository host when `repo_url` is set in mkdocs.yml, and otherwise becomes its link text (the built
site holds no copy of the file). A link outside docs/ to a file that does not exist is reported as a
warning, so `--strict` still fails on it. Links between docs pages are left to MkDocs' own validation.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote, urlsplit

log = logging.getLogger("mkdocs.hooks.repo_links")

_LINK = re.compile(r"(?P<image>!?)\[(?P<text>[^\]]*)\]\((?P<url><[^>]*>|[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _outside_link(match: re.Match, page_dir: str, docs_dir: str, root: str, repo_url: str, src_uri: str) -> str:
    url = match["url"].strip("<>")
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith(("/", "#")) or not parts.path:
        return match[0]
    target = os.path.normpath(os.path.join(page_dir, unquote(parts.path)))
    if target == docs_dir or target.startswith(docs_dir + os.sep):
        return match[0]  # a docs file: MkDocs validates it
    if not os.path.exists(target):
        log.warning("Doc file '%s' links to '%s', which is not in the repository.", src_uri, url)
        return match[0]
    if repo_url:
        rel = os.path.relpath(target, root).replace(os.sep, "/")
        anchor = f"#{parts.fragment}" if parts.fragment else ""
        return f"{match['image']}[{match['text']}]({repo_url.rstrip('/')}/blob/HEAD/{rel}{anchor}{match['title'] or ''})"
    return match["text"]


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs' hook signature)
    docs_dir = os.path.normpath(config["docs_dir"])
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    page_dir = os.path.dirname(os.path.normpath(page.file.abs_src_path))
    repo_url = config.get("repo_url") or ""
    out, in_fence = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and "](" in line:
            line = _LINK.sub(lambda m: _outside_link(m, page_dir, docs_dir, root, repo_url, page.file.src_uri), line)
        out.append(line)
    return "".join(out)
