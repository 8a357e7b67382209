"""mkdocs hook: serve the repository's own markdown files as site pages, without copies in docs/.

The README, the model cards, the kernel design and the benchmark guide are written to be read on GitHub, where
their links are paths inside the repository. Here each becomes a site page (``SOURCES``, and every
``model_cards/<name>.md`` as ``models/<name>.md``), and every relative link is rewritten: to the page that serves
the linked file, or, for a repository file that is no page, to the file on GitHub when ``repo_url`` is set and to
plain text otherwise. A link to a file that does not exist is left alone, so the strict build reports it.
"""
from __future__ import annotations

import os
import posixpath
import re

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# site page -> repository file, for the pages that live outside docs/
SOURCES = {
    'index.md': 'README.md',
    'kernels.md': 'kernels/README.md',
    'benchmarks.md': 'benchmarks/README.md',
    'changelog.md': 'CHANGELOG.md',
}
_LINK = re.compile(r'(?<!!)\[([^\]]+)\]\(([^)\s]+)\)')


def _pages() -> dict[str, str]:
    pages = dict(SOURCES)
    cards = os.path.join(ROOT, 'model_cards')
    for name in sorted(os.listdir(cards)):
        if name.endswith('.md'):
            pages[f'models/{name}'] = f'model_cards/{name}'
    return pages


def on_files(files, config):
    for src_uri, repo_path in _pages().items():
        files.append(File.generated(config, src_uri, abs_src_path=os.path.join(ROOT, repo_path)))
    return files


def on_page_markdown(markdown, page, config, files):
    pages = _pages()
    site_of = {repo_path: src_uri for src_uri, repo_path in pages.items()}
    src_uri = page.file.src_uri
    repo_path = pages.get(src_uri, f'docs/{src_uri}')
    here = posixpath.dirname(repo_path)

    def rewrite(match):
        text, target = match.groups()
        if re.match(r'[a-z]+:', target) or target.startswith(('#', '/')):
            return match.group(0)
        path, _, anchor = target.partition('#')
        linked = posixpath.normpath(posixpath.join(here, path))
        if linked.startswith('docs/'):
            site = linked[len('docs/'):]
        else:
            site = site_of.get(linked)
        if site is not None:
            url = posixpath.relpath(site, posixpath.dirname(src_uri) or '.')
            return f'[{text}]({url}{"#" + anchor if anchor else ""})'
        if not os.path.exists(os.path.join(ROOT, linked)):
            return match.group(0)   # left for mkdocs to report: a strict build fails on it
        if config.repo_url:
            return f'[{text}]({config.repo_url.rstrip("/")}/blob/main/{linked})'
        return text

    return _LINK.sub(rewrite, markdown)
