"""Builders for the builtin architectures. Parameter names follow flash-linear-attention / Hugging Face
module paths (``layers.3.attn.q_proj.weight``), which are the generated modules' `named_parameters()`."""

from __future__ import annotations

from .ir import UNARY_FNS, Graph, GraphBuilder, SpecError, arithmetic

STD = "0.02"  # initializer_range of the reference implementations, used by `--parametrization sp`


def mlp(layers: int = 3, d_in: int = 32, classes: int = 10, bias: bool = False, act: str = "relu") -> Graph:
    """An MLP classifier: d_in (finite) -> `layers` hidden layers of width n -> classes (finite)."""
    _check_positive(layers=layers, d_in=d_in, classes=classes)
    _check_classes(classes=classes)
    if act not in UNARY_FNS:
        raise SpecError(f"option act: unknown function {act!r}; one of {', '.join(UNARY_FNS)}")
    b = GraphBuilder("mlp", meta={"family": "mlp", "layers": layers, "bias": bias, "act": act})
    b.dim("d_in", d_in), b.dim("width", "n"), b.dim("classes", classes)
    h = b.input("x", ["d_in"], kind="features")
    for i in range(layers):
        pre = b.linear(f"h{i}", h, ["width"], f"layers.{i}.weight", bias=f"layers.{i}.bias" if bias else None)
        h = b.unary(f"a{i}", pre, act)
    logits = b.linear("logits", h, ["classes"], "readout.weight", bias="readout.bias" if bias else None)
    b.cross_entropy("loss", logits)
    return b.build()


def transformer(
    layers: int = 4,
    vocab: int = 256,
    heads: int = 4,
    head_dim: int | None = None,
    tied: bool = False,
    ffn_mult: str = "8/3",
) -> Graph:
    """Pre-RMSNorm decoder: causal attention + SwiGLU MLP. With `head_dim` unset the head count is
    fixed and the head dim grows with width (d_model / heads); with it set, heads grow instead."""
    _check_positive(layers=layers, vocab=vocab, heads=heads)
    _check_classes(vocab=vocab)
    if head_dim is not None:
        _check_positive(head_dim=head_dim)
    b = GraphBuilder("transformer", meta={"family": "lm", "layers": layers, "vocab": vocab, "tied": tied,
                                          "attn_every": 1, "attn_dims": ("heads", "d_head")})
    _lm_dims(b, vocab, ffn_mult)
    _head_dims(b, "heads", "d_head", heads, head_dim)
    x = _embed(b)
    for i in range(layers):
        x = _attention_block(b, i, x, "heads", "d_head")
        x = _mlp_block(b, i, x)
    _lm_head(b, x, tied)
    return b.build()


def gdn(
    layers: int = 8,
    vocab: int = 32000,
    regime: str = "head_dim",
    heads: int = 6,
    d_k: int = 128,
    d_v: int = 256,
    tied: bool = True,
    conv: bool = True,
    gate: bool = True,
    allow_neg_eigval: bool = False,
    attn_every: int = 0,
    attn_heads: int = 16,
    ffn_mult: str = "8/3",
) -> Graph:
    """A Gated DeltaNet language model (flash-linear-attention's GatedDeltaNet layer).

    regime="head_dim": `heads` fixed, d_k = d_model/8, d_v = d_model/4 (the recurrence's inner dims grow).
    regime="heads": d_k, d_v fixed, heads = d_model / (heads-per-width constant), i.e. heads ~ n.
    attn_every=k > 0 makes every k-th block softmax attention (a GatedDeltaNet-H1 hybrid)."""
    _check_positive(layers=layers, vocab=vocab, heads=heads, d_k=d_k, d_v=d_v, attn_heads=attn_heads)
    if regime not in ("head_dim", "heads"):
        raise SpecError(f"gdn: regime must be 'head_dim' or 'heads', not {regime!r}")
    _check_classes(vocab=vocab)
    if attn_every < 0:
        raise SpecError(f"gdn: attn_every must be >= 0, got {attn_every}")
    if attn_every > layers:
        raise SpecError(f"gdn: attn_every={attn_every} > layers={layers} leaves no attention block; use 0 "
                        "for none")
    b = GraphBuilder("gdn", meta={"family": "lm", "layers": layers, "vocab": vocab, "tied": tied, "conv": conv,
                                  "gate": gate, "allow_neg_eigval": allow_neg_eigval, "attn_every": attn_every,
                                  "attn_dims": ("attn_heads", "attn_d_head")})
    _lm_dims(b, vocab, ffn_mult)
    if regime == "head_dim":
        b.dim("heads", heads), b.dim("d_k", "n/8"), b.dim("d_v", "n/4")
    else:
        b.dim("heads", f"n/{d_k * 8}"), b.dim("d_k", d_k), b.dim("d_v", d_v)
    b.dim("kernel", 4)
    if attn_every:
        _head_dims(b, "attn_heads", "attn_d_head", attn_heads, None)
    x = _embed(b)
    for i in range(layers):
        if attn_every and (i + 1) % attn_every == 0:
            x = _attention_block(b, i, x, "attn_heads", "attn_d_head")
        else:
            x = _gdn_block(b, i, x, conv, gate)
        x = _mlp_block(b, i, x)
    _lm_head(b, x, tied)
    return b.build()


def _gdn_block(b: GraphBuilder, i: int, x: str, conv: bool, gate: bool) -> str:
    p, L = f"layers.{i}.attn", f"l{i}_"
    xn = b.rmsnorm(f"{L}attn_in", x, gain=f"layers.{i}.attn_norm.weight")

    def branch(name, dims, act=True):
        h = b.linear(f"{L}{name}", xn, dims, f"{p}.{name}_proj.weight", std=STD)
        if conv:
            h = b.conv1d(f"{L}{name}_conv", h, f"{p}.{name}_conv1d.weight", "kernel")
        return b.unary(f"{L}{name}_act", h, "silu") if act else h

    q = b.l2norm(f"{L}q_l2", branch("q", ["heads", "d_k"]), over="d_k")
    q = b.scale(f"{L}q_scaled", q, "attn.q_scale", standard="d_k**-0.5")
    k = b.l2norm(f"{L}k_l2", branch("k", ["heads", "d_k"]), over="d_k")
    v = branch("v", ["heads", "d_v"])
    # decay: g = -exp(A_log) * softplus(a_proj(x) + dt_bias), alpha = exp(g)
    a = b.linear(f"{L}a", xn, ["heads"], f"{p}.a_proj.weight", std=STD)
    dt_bias = b.param(f"{L}dt_bias", f"{p}.dt_bias", ["heads"], init="custom")
    a_log = b.param(f"{L}A_log", f"{p}.A_log", ["heads"], init="custom")
    rate = b.unary(f"{L}rate", b.add(f"{L}a_dt", a, dt_bias), "softplus")
    neg_a = b.unary(f"{L}neg_A", b.unary(f"{L}A", a_log, "exp"), "neg")
    alpha = b.unary(f"{L}alpha", b.mul(f"{L}g", neg_a, rate), "exp")
    # write strength: beta = sigmoid(b_proj(x)) (times 2 with allow_neg_eigval: same exponents)
    beta = b.unary(f"{L}beta", b.linear(f"{L}b", xn, ["heads"], f"{p}.b_proj.weight", std=STD), "sigmoid")
    o = b.delta_rule(f"{L}o", q, k, v, alpha, beta, key="d_k", value="d_v")
    o = b.rmsnorm(f"{L}o_norm", o, gain=f"{p}.o_norm.weight", over="d_v")
    if gate:
        g = b.unary(f"{L}gate", b.linear(f"{L}g_proj", xn, ["heads", "d_v"], f"{p}.g_proj.weight", std=STD), "silu")
        o = b.mul(f"{L}gated", o, g)
    out = b.linear(f"{L}attn_out", o, ["d_model"], f"{p}.o_proj.weight", std=STD)
    return b.add(f"{L}res_attn", x, out)


def _attention_block(b: GraphBuilder, i: int, x: str, heads: str, d_head: str) -> str:
    p, L = f"layers.{i}.attn", f"l{i}_"
    xn = b.rmsnorm(f"{L}attn_in", x, gain=f"layers.{i}.attn_norm.weight")
    q, k, v = (b.linear(f"{L}{n}", xn, [heads, d_head], f"{p}.{n}_proj.weight", std=STD) for n in "qkv")
    o = b.attention(f"{L}attn", q, k, v, over=[d_head], slot="attn.logit_scale", standard=f"{d_head}**-0.5")
    out = b.linear(f"{L}attn_out", o, ["d_model"], f"{p}.o_proj.weight", std=STD)
    return b.add(f"{L}res_attn", x, out)


def _mlp_block(b: GraphBuilder, i: int, x: str) -> str:
    p, L = f"layers.{i}.mlp", f"l{i}_"
    xn = b.rmsnorm(f"{L}mlp_in", x, gain=f"layers.{i}.mlp_norm.weight")
    gate = b.unary(f"{L}mlp_act", b.linear(f"{L}mlp_gate", xn, ["ffn"], f"{p}.gate_proj.weight", std=STD), "silu")
    up = b.linear(f"{L}mlp_up", xn, ["ffn"], f"{p}.up_proj.weight", std=STD)
    h = b.mul(f"{L}swiglu", gate, up)
    out = b.linear(f"{L}mlp_out", h, ["d_model"], f"{p}.down_proj.weight", std=STD)
    return b.add(f"{L}res_mlp", x, out)


def _lm_dims(b: GraphBuilder, vocab: int, ffn_mult: str) -> None:
    mult = arithmetic(ffn_mult, {}, "option ffn_mult")
    if not (mult.is_number and mult > 0):
        raise SpecError(f"option ffn_mult must be a positive number (the MLP is ffn_mult * d_model), got "
                        f"{ffn_mult!r}")
    b.dim("vocab", vocab), b.dim("d_model", "n"), b.dim("ffn", f"({ffn_mult})*n")


def _head_dims(b: GraphBuilder, heads: str, d_head: str, count: int, head_dim: int | None) -> None:
    if head_dim is None:
        b.dim(heads, count), b.dim(d_head, f"n/{count}")
    else:
        b.dim(heads, f"n/{head_dim}"), b.dim(d_head, head_dim)


def _embed(b: GraphBuilder) -> str:
    tokens = b.input("tokens", ["vocab"])
    return b.embedding("embed", tokens, ["d_model"], "embeddings.weight", std=STD)


def _lm_head(b: GraphBuilder, x: str, tied: bool) -> None:
    h = b.rmsnorm("final", x, gain="norm.weight")
    if tied:
        raw = b.linear("logits_raw", h, ["vocab"], "embeddings.weight")
        logits = b.scale("logits", raw, "readout", standard="1")
    else:
        logits = b.linear("logits", h, ["vocab"], "lm_head.weight", std=STD)
    b.cross_entropy("loss", logits)


def _check_classes(**values) -> None:
    for key, value in values.items():
        if value < 2:
            raise SpecError(f"option {key} must be at least 2 (a loss over one class is 0), got {value}")


def _check_positive(**values) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise SpecError(f"option {key} must be a positive integer, got {value!r}")
