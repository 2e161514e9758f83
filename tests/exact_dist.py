"""Chi-square of sampled continuations against an exactly enumerated distribution (the oracle of the
speculative and speculative-Jacobi exactness tests)."""
import torch
from scipy.stats import chisquare


def chi2_pvalue(cells, probs):
    counts = torch.bincount(cells, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a continuation of probability 0"
    expected, counts = probs[support].double() * cells.numel(), counts[support]
    small = expected < 5  # pool sparse cells so the chi-square approximation holds
    if small.any():
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
    return chisquare(counts.numpy(), (expected * counts.sum() / expected.sum()).numpy()).pvalue
