"""The kernels' compile cost stays within its goals, measured without a GPU:
``bench.kernel_compile`` builds every kernel family (every module that exposes
``kernel_specs``) for sm_90 with Triton's own compiler, at T=1 and T=26 tables, and the
rows must show compile times within budget, no spills, <= 4 KB of kernel parameters,
and the same kernels at both table counts (the source does not grow with T).

The compile runs in a subprocess: tests/conftest.py switches the Triton interpreter on
for a CPU machine, and interpreted ``@triton.jit`` functions cannot be compiled.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from bench import kernel_compile as kc

TABLES = (1, 26)


def _families() -> list[str]:
    out = []
    for family in kc.FAMILIES:
        module = importlib.import_module(f"inductor_embed.kernels.{family}")
        if callable(getattr(module, "kernel_specs", None)):
            out.append(family)
    return out


@pytest.fixture(scope="module")
def measured() -> tuple[list[str], dict[tuple[str, int], dict], str]:
    pytest.importorskip("triton.backends.nvidia.compiler")
    families = _families()
    if not families:
        pytest.skip("no kernel family exposes kernel_specs yet")
    rows, log, rc = kc.run_subprocess(families, TABLES, arch="sm_90", timeout=240)
    assert rc == 0, log
    return families, {(r["family"], r["tables"]): r for r in rows}, log


def _per_kernel(row: dict, key: str) -> str:
    return ", ".join(f"{k['name']}={k[key]}" for k in row["per_kernel"])


def test_compile_goals(measured):
    """Every family at every T: no compile error, within the compile budget, no spills
    (where ptxas said), at most 4 KB of parameters. All misses are listed at once."""
    families, rows, log = measured
    misses = []
    for family in families:
        for t in TABLES:
            r = rows.get((family, t))
            where = f"{family} at T={t}"
            if r is None:
                misses.append(f"{where}: no row")
                continue
            if r["error"] is not None:
                misses.append(f"{where}: {r['error']}")
            if r["kernels"] < 1:
                misses.append(f"{where}: no kernel compiled")
            if r["compile_s"] > kc.compile_goal_s(t):
                misses.append(f"{where}: compile {r['compile_s']:.1f} s > {kc.compile_goal_s(t):.0f} s "
                              f"({_per_kernel(r, 'compile_s')})")
            if r["spills"]:
                misses.append(f"{where}: {r['spills']} bytes of spill stores ({_per_kernel(r, 'spills')}; "
                              f"registers {_per_kernel(r, 'registers')})")
            if r["param_bytes"] is None or r["param_bytes"] > kc.PARAM_BYTES_GOAL:
                misses.append(f"{where}: {r['param_bytes']} parameter bytes ({_per_kernel(r, 'param_bytes')})")
            for n in (r["launches_fwd"], r["launches_bwd"]):
                if n is not None and n < 1:
                    misses.append(f"{where}: LAUNCHES {n}")
    assert not misses, "\n".join(misses) + "\n\n" + log


def test_source_does_not_grow_with_tables(measured):
    families, rows, _ = measured
    for family in families:
        one, many = rows[(family, TABLES[0])], rows[(family, TABLES[-1])]
        assert one["kernels"] == many["kernels"], family
        assert [k["name"] for k in one["per_kernel"]] == [k["name"] for k in many["per_kernel"]], family
        # Per-table kernel arguments would add 8 bytes per pointer per table.
        assert abs(one["param_bytes"] - many["param_bytes"]) <= 64, (family, one["param_bytes"],
                                                                      many["param_bytes"])
        assert one["launches_fwd"] == many["launches_fwd"] and one["launches_bwd"] == many["launches_bwd"]


def test_parsers():
    ptx = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u32 k_param_1,
	.param .align 8 .b8 k_param_2[24],
	.param .f32 k_param_3
)
.maxntid 128, 1, 1
{
	ld.param.b64 	%rd1, [k_param_0];
}"""
    assert kc.ptx_param_bytes(ptx) == 8 + 4 + 24 + 4
    assert kc.ptx_param_bytes("no entry here") is None
    log = ("ptxas info    : Function properties for k\n"
           "    0 bytes stack frame, 20 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 0 barriers\n"
           "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers\n")
    assert kc.ptxas_stats(log) == (24, 255)
    assert kc.ptxas_stats("") == (None, None)
    assert kc.signature_param_bytes({"a": "*fp32", "n": "i64", "m": "i32", "B": "constexpr"}) == 20
    assert [kc.parse_arch(a) for a in ("sm_90", "sm_90a", "90", "SM_100")] == [90, 90, 90, 100]
    assert [kc.compile_goal_s(t) for t in (1, 26, 27, 100, 1000)] == [30, 30, 60, 60, 120]


def test_spec_arguments_follow_the_function():
    """The ASTSource signature follows the kernel's own argument order and marks pointers
    16-byte aligned by their position; a spec that misnames an argument is refused."""

    class Fn:
        __name__ = "k"
        arg_names = ["x_ptr", "BLOCK", "n", "y_ptr"]

    spec = {"name": "k", "fn": Fn(), "num_warps": 4, "signature": {"x_ptr": "*fp32", "n": "i64",
                                                                   "y_ptr": "*bf16"},
            "constexprs": {"BLOCK": 64}}
    sig, constexprs, attrs = kc.ast_source_args(spec)
    assert list(sig.items()) == [("x_ptr", "*fp32"), ("BLOCK", "constexpr"), ("n", "i64"), ("y_ptr", "*bf16")]
    assert constexprs == {"BLOCK": 64}
    assert attrs == {(0,): [["tt.divisibility", 16]], (3,): [["tt.divisibility", 16]]}
    with pytest.raises(ValueError, match="missing"):
        kc.ast_source_args({**spec, "signature": {"x_ptr": "*fp32", "n": "i64"}})


def _variant_keys(module) -> set[tuple]:
    return {(s["fn"].__name__, s["num_warps"], tuple(sorted(s["signature"].items())),
             tuple(sorted(s["constexprs"].items()))) for s in module.kernel_variants()}


def _vec(elem: int, values: list[int]) -> int:
    """What ``_meta.vec_width`` returns for aligned tensors."""
    v = 16 // elem
    return v if all(x % v == 0 for x in values) else 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_variants_cover_every_launch(dtype: torch.dtype) -> None:
    """``kernel_variants()`` (what CI compiles with each Triton) holds every kernel the CUDA
    launchers pick, for widths 1..300, any row count, table count and dtype: a variant
    that one Triton cannot compile is then caught offline."""
    from inductor_embed.kernels import multi_embedding as me
    from inductor_embed.kernels import multi_embedding_bag as bg
    from inductor_embed.kernels import one_hot_linear as oh

    ty = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    e = dtype.itemsize
    me_keys, bg_keys, oh_keys = _variant_keys(me), _variant_keys(bg), _variant_keys(oh)
    for d in [*range(1, 70), 96, 127, 128, 129, 200, 256, 300]:
        fvec, gvec = _vec(e, [d]), min(_vec(e, [d]), _vec(4, [d]))
        for n, t in ((1, 1), (4096, 26), (1 << 20, 1), (300, 1000)):
            bn, bd, nw = me.block_sizes(d, n, t)
            assert ("_multi_embedding_fwd_kernel", nw, tuple(sorted({"meta_ptr": "*i64", "err_ptr": "*i32",
                    "out_ptr": f"*{ty}", "out_row_stride": "i64", "N": "i64"}.items())),
                    tuple(sorted({"COLS": me.META_COLS, "BLOCK_N": bn, "VEC": fvec, "BLOCK_D": bd}.items()))) in me_keys
            assert ("_multi_embedding_bwd_kernel", nw, tuple(sorted({"meta_ptr": "*i64", "go_ptr": f"*{ty}",
                    "go_row_stride": "i64", "gw_ptr": "*fp32", "N": "i64"}.items())),
                    tuple(sorted({"COLS": me.META_COLS, "BLOCK_N": bn, "VEC": gvec, "BLOCK_D": bd}.items()))) in me_keys
        for has_max in (False, True):
            bb, bd, nw = bg.block_sizes([d])
            assert ("_multi_embedding_bag_fwd_kernel", nw, tuple(sorted({"meta_ptr": "*i64", "err_ptr": "*i32",
                    "ty_ptr": f"*{ty}"}.items())), tuple(sorted({"COLS": bg.META_COLS, "HAS_MAX": has_max, "VEC": fvec,
                    "BLOCK_B": bb, "BLOCK_D": bd}.items()))) in bg_keys
            bb, bd, nw = bg.block_sizes([d], backward=True)
            assert ("_multi_embedding_bag_bwd_kernel", nw, tuple(sorted({"meta_ptr": "*i64", "err_ptr": "*i32",
                    "gw_ptr": "*fp32", "ty_ptr": f"*{ty}"}.items())), tuple(sorted({"COLS": bg.META_COLS,
                    "HAS_MAX": has_max, "VEC": gvec, "BLOCK_B": bb, "BLOCK_D": bd}.items()))) in bg_keys
        bn, bd, nw = oh.block_sizes(d)
        for has_bias in (False, True):
            consts = {"COLS": oh.META_COLS, "HAS_BIAS": has_bias, "BLOCK_N": bn, "BLOCK_D": bd}
            got = [k for k in oh_keys if k[0] == "_one_hot_linear_bwd_kernel" and k[1] == nw
                   and dict(k[2])["go_ptr"] == f"*{ty}" and {**consts}.items() <= dict(k[3]).items()]
            assert {dict(k[3]).get("gw_stride_d") == 1 for k in got} == {True, False}  # both gradient layouts
            got = [k for k in oh_keys if k[0] == "_one_hot_linear_fwd_kernel" and k[1] == nw
                   and dict(k[2])["w_ptr"] == f"*{ty}" and dict(k[2])["out_ptr"] == f"*{ty}"
                   and consts.items() <= dict(k[3]).items()]
            assert {dict(k[3]).get("w_stride_v") == 1 for k in got} == {True, False}  # both weight layouts
