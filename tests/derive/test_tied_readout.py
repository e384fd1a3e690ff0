"""A tied readout contracts the final hidden state with the embedding matrix. Only the part of the hidden state
that the embedding carries (through the residual stream's sums and the norms) is correlated with it: under
muP that part is Theta(1), so the contraction is a full (LLN) sum; under SP the residual branches grow as
n^(3/2) and the embedding's part of the normalised stream falls as n^(-3/2), so the independent (CLT) sum of
the rest wins (measured: +0.49 at widths 1024-8192, benchmarks/coord/gpu/sp/gdn_sp_adamw.json)."""

import sympy as sp

from mudelta.derive import derive
from mudelta.graphs.builders import gdn

R = sp.Rational


def test_tied_readout_correlation_follows_the_embeddings_part():
    sp_ = derive(gdn(layers=2, tied=True), "adamw", parametrization="sp").engine
    assert sp_.carried["final"]["embeddings.weight"] == R(-3, 2)  # x(final) = 0: the part is n^-3/2
    assert sp_.X("logits_raw") == R(1, 2)  # CLT over d_model, not LLN (which would be n^1)
    mup = derive(gdn(layers=2, tied=True), "adamw").engine
    assert mup.carried["final"]["embeddings.weight"] == mup.X("final") == 0
    assert mup.X("logits_raw") == 1  # LLN over d_model, times the readout multiplier n^-1 -> logits Theta(1)
    assert mup.X("logits") == 0
