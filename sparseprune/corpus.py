"""Real English text with no download: the Python documentation shipped with the standard
library (``pydoc_data.topics`` paragraphs) and the docstrings of the standard library's own
modules, read from their sources with :mod:`ast` (nothing is imported or executed).

Evaluation text is a fixed, seeded held-out set of pydoc_data paragraphs; training and
calibration text never contains one of them (:func:`split`).
"""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

__all__ = ["pydoc_paragraphs", "stdlib_docstrings", "split"]


def _norm(text: str) -> str:
    return " ".join(text.split())


def pydoc_paragraphs(min_words: int = 20) -> list[str]:
    """Distinct paragraphs of ``pydoc_data.topics`` with at least ``min_words`` words, in a
    fixed order (whitespace normalised)."""
    from pydoc_data import topics

    seen, out = set(), []
    for text in topics.topics.values():
        for p in text.split("\n\n"):
            p = _norm(p)
            if len(p.split()) >= min_words and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def stdlib_docstrings(min_words: int = 20, root: str | Path | None = None) -> list[str]:
    """Distinct paragraphs of the module, class and function docstrings of the standard
    library's Python sources (tests and vendored packages skipped), in a fixed order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idle_test", "site-packages", "lib2to3") for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue  # a few stdlib files are templates or use other encodings
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                for p in doc.split("\n\n"):
                    p = _norm(p)
                    if len(p.split()) >= min_words and p not in seen:
                        seen.add(p)
                        out.append(p)
    return out


def split(n_eval: int, n_calib: int = 0, *, seed: int = 0, min_words: int = 20,
          with_docstrings: bool = True) -> tuple[list[str], list[str], list[str]]:
    """(train, calibration, evaluation) texts, pairwise disjoint.

    Evaluation: ``n_eval`` pydoc_data paragraphs chosen with ``seed``; calibration: the next
    ``n_calib``; training: every other pydoc_data paragraph plus (``with_docstrings``) the
    standard library docstrings, minus anything equal to an evaluation or calibration text.
    """
    paras = pydoc_paragraphs(min_words)
    if n_eval < 1 or n_calib < 0 or n_eval + n_calib > len(paras):
        raise ValueError(f"pydoc_data has {len(paras)} paragraphs of >= {min_words} words; "
                         f"asked for {n_eval} evaluation + {n_calib} calibration")
    random.Random(seed).shuffle(paras)
    evaluation, calib = paras[:n_eval], paras[n_eval:n_eval + n_calib]
    held = set(evaluation) | set(calib)
    train = paras[n_eval + n_calib:]
    if with_docstrings:
        train += [d for d in stdlib_docstrings(min_words) if d not in held]
    train = list(dict.fromkeys(train))  # dedupe, order kept
    return train, calib, evaluation
