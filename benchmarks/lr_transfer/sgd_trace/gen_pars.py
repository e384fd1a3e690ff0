"""Write the SGD ablation parametrization files of sgd_trace.md: muP exponents for SGD (tp5 convention, as
`mudelta derive gdn --optimizer sgd-nesterov` prints them), with the lr-grows-as-n groups (c = -1) kept at
c = -1 only for the groups named, every other one of them at c = 0. Globs, so any layer count works."""

from pathlib import Path

GROUPS = {
    "emb": ["embeddings.weight"],
    "norm": ["layers.*.attn_norm.weight", "layers.*.mlp_norm.weight", "norm.weight"],
    "onorm": ["layers.*.attn.o_norm.weight"],
    "conv": ["layers.*.attn.*_conv1d.weight"],
}
HIDDEN = ["q_proj", "k_proj", "v_proj", "g_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


def text(keep: set[str], title: str) -> str:
    rows = [f"# {title}", "parameters:"]
    for g, pats in GROUPS.items():
        c = "'-1'" if g in keep else "'0'"
        for p in pats:
            rows.append(f"  '{p}': {{a: '0', b: '0', c: {c}}}")
    for h in HIDDEN:
        rows.append(f"  'layers.*.attn.{h}.weight': {{a: '0', b: '1/2', c: '0'}}")
    for h in MLP:
        rows.append(f"  'layers.*.mlp.{h}.weight': {{a: '0', b: '1/2', c: '0'}}")
    rows.append("  'layers.*.attn.a_proj.weight': {a: '0', b: '1', c: '1'}")
    rows.append("  'layers.*.attn.b_proj.weight': {a: '0', b: '1', c: '1'}")
    rows.append("  'layers.*.attn.dt_bias': {a: '0', b: '0', c: '0'}")
    rows.append("  'layers.*.attn.A_log': {a: '0', b: '0', c: '0'}")
    rows += ["multipliers:", "  attn.q_scale: '0'", "  readout: '-1'", ""]
    return "\n".join(rows)


here = Path(__file__).parent
variants = {"none": (set(), "muP, every lr-grows-as-n group held at n^0 (= sgd_ablin.yaml)")}
for g in GROUPS:
    variants[f"only_{g}"] = ({g}, f"muP, only {g} keeps lr n; the other lr-grows-as-n groups at n^0")
for g in ("emb", "conv", "onorm"):  # the two groups that diverge alone (sgd_trace.md), and o_norm (addendum 5)
    variants[f"no_{g}"] = (set(GROUPS) - {g}, f"muP, only {g} held at lr n^0; the others keep lr n")
for name, (keep, title) in variants.items():
    (here / f"sgd_abl_{name}.yaml").write_text(text(keep, title))
    print(name, sorted(keep))
