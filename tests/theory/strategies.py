"""Hypothesis strategies for policies, rewards and temperatures."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def policies(draw, k=None, allow_zeros=True, min_k=2, max_k=12):
    """A distribution over ``k`` actions; weights span several orders of magnitude."""
    k = draw(st.integers(min_k, max_k)) if k is None else k
    logw = draw(hnp.arrays(np.float64, k, elements=st.floats(-12, 0)))
    w = np.exp(logw * np.log(10))
    if allow_zeros and k > 2:
        zero = draw(hnp.arrays(np.bool_, k))
        zero[np.argsort(-w, kind="stable")[:2]] = False  # keep two actions on the support
        w = np.where(zero, 0.0, w)
    return w / w.sum()


@st.composite
def problems(draw, min_k=2, max_k=12, tau_min=1e-3, tau_max=10.0, allow_zeros=True, binary=False):
    """``(pi, r, tau)`` for one prompt; rewards are not constant on the support."""
    pi = draw(policies(min_k=min_k, max_k=max_k, allow_zeros=allow_zeros))
    k = pi.size
    if binary:
        r = draw(hnp.arrays(np.float64, k, elements=st.sampled_from([0.0, 1.0])))
    else:
        r = draw(hnp.arrays(np.float64, k, elements=st.floats(-3, 3)))
    support = np.flatnonzero(pi > 0)
    if np.ptp(r[support]) == 0:
        r[support[0]] = 1.0 - r[support[0]] if binary else r[support[0]] + 1.0
    tau = draw(st.floats(np.log(tau_min), np.log(tau_max)).map(np.exp))
    return pi, r, tau
