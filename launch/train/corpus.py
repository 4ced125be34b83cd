"""The embedded default corpus: English prose made from Python's own standard-library docstrings.

Nothing is downloaded and nothing large is shipped: the text comes from the interpreter that runs
the program, in a fixed order (a fixed module list, members sorted by name), so it is the same on
every machine with the same Python version. About 0.5 MB of text (Python 3.11), enough for a demo.
"""
from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path

# Pure-Python stdlib modules with long, well-written docstrings, present on every CPython build.
MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest",
    "email", "enum", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac",
    "html", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "json", "locale", "logging",
    "mailbox", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pickletools",
    "pdb", "pprint", "queue", "random", "re", "selectors", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "traceback", "typing", "unittest", "urllib.parse", "urllib.request",
    "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile",
)


def _docs(module_name: str):
    try:
        module = importlib.import_module(module_name)
    except Exception:   # a module a minimal build leaves out (turtle without tkinter): skip it
        return
    if module.__doc__:
        yield module.__doc__
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
            continue
        doc = inspect.getdoc(member) if (inspect.isclass(member) or inspect.isfunction(member)) else None
        if doc:
            yield doc
        if inspect.isclass(member):
            for attr, value in sorted(vars(member).items()):
                if not attr.startswith("_") and inspect.isfunction(value) and value.__doc__:
                    yield inspect.getdoc(value)


def corpus_text() -> str:
    with warnings.catch_warnings():   # touching deprecated members (typing.io) warns; the text is the same
        warnings.simplefilter("ignore")
        paragraphs = [doc.strip() for name in MODULES for doc in _docs(name)]
    return "\n\n".join(p for p in paragraphs if len(p) > 40) + "\n"


def write_default_corpus(directory: Path) -> Path:
    """Write the corpus once per Python version into directory; returns the file.

    Generated in a fresh interpreter without site-packages (-I -S): libraries imported into this
    process (torch, deepspeed) add members to stdlib modules and would change the text.
    """
    path = Path(directory) / f"stdlib-docs-py{sys.version_info.major}.{sys.version_info.minor}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        subprocess.run([sys.executable, "-I", "-S", __file__, str(tmp)], check=True)
        tmp.replace(path)
    return path


if __name__ == "__main__":   # the isolated generator: python -I -S corpus.py OUT
    Path(sys.argv[1]).write_text(corpus_text(), encoding="utf-8")
