"""How an optimizer turns a learning-rate exponent into the size of a parameter's update.

A parameter W = n^{-a} w, w ~ N(0, n^{-2b}) at init, is trained with learning rate eta * n^{-c}. What the
engine needs from an optimizer is the coordinate size of the update of the *effective* weight W after one
step: n^{-rho}. Each optimizer is one class mapping (a, c, gradient size) -> rho and back, and naming the
abc-symmetry that leaves training unchanged. Sign-like (Lion), parameter-relative (Adafactor) or
orthogonalised (Muon) updates are one subclass each.
"""

from __future__ import annotations

import sympy as sp


class Optimizer:
    name = ""
    momentum = False
    decoupled_weight_decay = False
    eps = False  # the update divides by the gradient's running rms plus an eps (which then gets a rule)
    # rho = a_coef * a + c + grad_coef * grad_exponent (+ b_coef * b): the update of W = n^{-a} w
    a_coef = 1
    grad_coef = 0
    b_coef = 0
    rule = ""

    def rho(self, a, b, c, grad):
        """Exponent rho with the effective update Delta W of size n^{-rho} per entry."""
        return self.a_coef * a + self.b_coef * b + c - self.grad_coef * grad

    def c_for(self, rho, a, b, grad):
        """The learning-rate exponent c that produces an update of size n^{-rho}."""
        return rho - self.a_coef * a - self.b_coef * b + self.grad_coef * grad

    def invariant(self) -> str:
        """The symmetry-invariant combination of (a, b, c) that fixes the update size."""
        parts = {1: "a", 2: "2a"}.get(self.a_coef, f"{self.a_coef}a")
        b = " + b" if self.b_coef else ""
        return f"{parts}{b} + c"

    def symmetry(self, theta):
        """(a, b, c) -> (a + theta, b - theta, c - k theta) leaves W and its updates unchanged."""
        return theta, -theta, -(self.a_coef - self.b_coef) * theta


class SGD(Optimizer):
    name = "sgd"
    a_coef, grad_coef = 2, 1
    rule = "SGD: Delta w = -eta n^{-c} dL/dw and dL/dw = n^{-a} dL/dW, so Delta W = -eta n^{-(2a+c)} dL/dW"


class SGDNesterov(SGD):
    name = "sgd-nesterov"
    momentum = True
    rule = SGD.rule + "; (Nesterov) momentum sums a bounded number of such steps: same exponents"


class Adam(Optimizer):
    name = "adam"
    eps = True
    rule = (
        "Adam: Delta w = -eta n^{-c} m/(sqrt(v)+eps) has entries Theta(eta n^{-c}) whatever the gradient "
        "scale (eps small), so Delta W = n^{-a} Delta w is Theta(n^{-(a+c)})"
    )


class AdamW(Adam):
    name = "adamw"
    decoupled_weight_decay = True
    rule = Adam.rule + "; decoupled weight decay shrinks w by eta n^{-c} lambda per step"


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, SGDNesterov, Adam, AdamW)}


def get_optimizer(name: str) -> Optimizer:
    from mudelta.graphs.ir import suggest

    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}{suggest(key, OPTIMIZERS)}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key]()


def is_finite(x) -> bool:
    return x is not sp.S.NegativeInfinity and x is not sp.S.Infinity
