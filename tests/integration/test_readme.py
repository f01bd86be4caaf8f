"""Every Python block of README.md and of each page in docs/ runs, in order, as a reader would.

Each page runs in a namespace of its own (the pages are self-contained; the README's namespace
is not shared), from a temporary working directory (the examples must not depend on the
checkout's layout; that directory is on ``sys.path``, as a script's own directory is).

Fences (GitHub reads only the first word as the language):

* `` ```python `` runs;
* `` ```python file=NAME `` is a file the page asks the reader to save: it is written as NAME
  into the working directory, not run (and must equal ``examples/NAME`` when that exists);
* `` ```python no-run `` is shown, not run: for code that needs what tests here lack (a GPU, a
  Docker engine, a cluster, a model hub, a server started elsewhere). Say why beside it.

Pages whose blocks cannot run self-contained are listed in :data:`NOT_RUN` with the reason.
Links between the pages (files and ``#anchors``) are checked too.
"""
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
EXAMPLES = ROOT / "examples"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)
#: Pages whose Python blocks are not run, and why.
NOT_RUN = {
    "openai.md": "its blocks query a gateway already running on 127.0.0.1:8080 with a key and "
                 "the README's `repo`; tests/integration/test_openai_gateway.py and "
                 "test_serve_openai.py run the gateway with the openai and langchain clients",
}
#: What a page's run must leave behind, checked on its namespace after its blocks ran.
PAGE_CHECKS = {
    "deploy.md": lambda ns: os.path.isfile("/tmp/towhee_rt_readme/docker/Dockerfile")
                 and os.path.isfile("k8s/kustomization.yaml"),
}


def blocks(path):
    """``(info, code)`` of every ```python block of ``path``, in order."""
    return [(info.split(), code) for info, code in FENCE.findall(path.read_text())]


def _file_name(info):
    names = [word[len("file="):] for word in info if word.startswith("file=")]
    return names[0] if names else None


def run_page(path, tmp_path):
    """Run ``path``'s python blocks in order in one namespace; return the namespace."""
    namespace = {"__name__": f"__{path.stem}_md__"}
    for number, (info, code) in enumerate(blocks(path), start=1):
        if "no-run" in info:
            continue
        name = _file_name(info)
        if name:
            (tmp_path / name).write_text(code)
            continue
        try:
            exec(compile(code, f"{path.name} python block {number}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{path.name} python block {number} failed: {type(exc).__name__}: "
                        f"{exc}\n{code}")
    return namespace


def test_readme_has_python_blocks():
    assert len(blocks(README)) >= 3


def test_readme_python_blocks_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = run_page(README, tmp_path)
    assert namespace["vec"].shape == (2048,)
    assert float(abs(namespace["res"][0] - namespace["vec"]).max()) <= 1e-5 * float(
        abs(namespace["vec"]).max())


@pytest.mark.parametrize("page", [p for p in DOCS if blocks(p) and p.name not in NOT_RUN],
                         ids=lambda p: p.name)
def test_docs_python_blocks_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = run_page(page, tmp_path)
    check = PAGE_CHECKS.get(page.name)
    assert check is None or check(namespace), f"{page.name}: its blocks did not leave what " \
                                              "PAGE_CHECKS expects"


def test_not_run_pages_exist():
    assert all((ROOT / "docs" / name).is_file() for name in NOT_RUN)


def test_file_blocks_equal_the_examples():
    compared = 0
    for page in [README] + DOCS:
        for info, code in blocks(page):
            name = _file_name(info)
            if name and (EXAMPLES / name).is_file():
                assert code == (EXAMPLES / name).read_text(), \
                    f"{page.name}: the listing of {name} differs from examples/{name}"
                compared += 1
    assert compared >= 1


def _anchors(path):
    """GitHub's anchors for the headings of ``path`` (outside code blocks)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def test_links_between_pages_resolve():
    broken = []
    for page in [README, ARCHITECTURE, EXAMPLES / "README.md"] + DOCS:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_page():
    text = README.read_text()
    missing = [p.name for p in DOCS if f"(docs/{p.name})" not in text]
    assert not missing and "(ARCHITECTURE.md)" in text, f"not linked from README.md: {missing}"
