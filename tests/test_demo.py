"""The demo's pieces that run without the MiniLM model: CLI parsing and the measures."""

import pytest
import torch

from sparseprune.bench.minilm import mean_cosine, paragraphs, split_corpus, top_k_agreement
from sparseprune.cli import build_parser


def test_cli_demo_options():
    args = build_parser().parse_args(["demo", "--out", "x", "--recipes", "2:4,50%",
                                      "--paragraphs", "100", "--keep-checkpoints"])
    assert (args.out, args.recipes, args.paragraphs, args.keep_checkpoints) == \
        ("x", ("2:4", "50%"), 100, True)
    defaults = build_parser().parse_args(["demo"])
    assert (defaults.out, defaults.recipes, defaults.batch, defaults.seq_len) == \
        ("demo-out", ("2:4", "90%"), 32, 128)
    for bad in (["--recipes", "3:4"], ["--paragraphs", "0"], ["--threads", "two"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["demo", *bad])


def test_corpus_split_is_disjoint_and_seeded():
    calib, evaluation = split_corpus(64, 1000, min_words=12, seed=0)
    assert len(calib) == 64 and len(evaluation) == 1000
    assert not set(calib) & set(evaluation)
    assert split_corpus(64, 1000, min_words=12, seed=0) == (calib, evaluation)
    assert split_corpus(64, 1000, min_words=12, seed=1)[1] != evaluation
    assert all(len(p.split()) >= 12 for p in evaluation)
    with pytest.raises(ValueError, match="paragraphs"):
        split_corpus(10, len(paragraphs(12)), min_words=12, seed=0)


def test_quality_measures():
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    assert top_k_agreement(e, e, 10) == 1.0
    assert mean_cosine(e, e) == pytest.approx(1.0)
    assert mean_cosine(e, -e) == pytest.approx(-1.0)
    other = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    # Unrelated embeddings agree about as often as chance (10 of 49 neighbours).
    assert top_k_agreement(e, other, 10) < 0.45
    # Scaling every embedding scales every similarity: the rankings stay the same.
    assert top_k_agreement(e, e * 3.0, 10) == 1.0
