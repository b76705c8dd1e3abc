"""The comma-separated option types of the command-line tools: what they accept and what they refuse."""
import argparse

import pytest

from fastvae import cli
from fastvae.bench import cli as bench_cli


@pytest.mark.parametrize("parse, text, expected", [
    (cli._widths, "512, 256", (512, 256)),
    (cli._widths, "64,", (64,)),
    (cli._betas, "0.25,1,16", [0.25, 1.0, 16.0]),
    (bench_cli._ints, "64,1024", [64, 1024]),
])
def test_accepted(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("parse, text, words", [
    (cli._widths, "512,0", "positive layer widths such as 512,256"),
    (cli._widths, "512,x", "positive layer widths"),
    (cli._widths, ",", "positive layer widths"),
    (cli._betas, "1,beta", "numbers"),
    (bench_cli._ints, "64,-1", "positive integers"),
    (bench_cli._ints, "1.5", "positive integers"),
])
def test_refused_with_what_was_expected(parse, text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected comma-separated {words}.*got {text!r}"):
        parse(text)
