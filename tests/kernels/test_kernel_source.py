"""One kernel source, pinned: a change to the multi_embedding forward kernel fails this test
and shows up in review as a change of this file: the source's hash (any edit) and, readably,
the kernel's arguments and every memory access it makes, in order (its TTIR would need a
non-interpreted compile, which the CPU test run does not do). The kernel's own diff sits
beside it in the same review, so the pin does not repeat the source.

Regenerate after an intended change with ``EXPECTTEST_ACCEPT=1 python -m pytest <this file>``.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap

import expecttest

from inductor_embed.kernels import multi_embedding

_MEMORY_OPS = ("load", "store", "atomic_add")


def kernel_summary(kernel) -> str:
    """The sha256 of ``kernel``'s source, its arguments, and its ``tl.load`` / ``tl.store`` /
    ``tl.atomic_add`` calls (pointer and mask), one a line, in source order."""
    # .fn: the Python function under both triton.jit and the interpreter's wrapper.
    src = textwrap.dedent(inspect.getsource(kernel.fn))
    fn = ast.parse(src).body[0]
    calls = sorted((node.lineno, node.col_offset, node) for node in ast.walk(fn)
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and node.func.attr in _MEMORY_OPS and ast.unparse(node.func.value) == "tl")
    lines = [f"sha256 {hashlib.sha256(src.encode()).hexdigest()}", "args " + ", ".join(a.arg for a in fn.args.args)]
    for lineno, _, call in calls:
        mask = next((ast.unparse(k.value) for k in call.keywords if k.arg == "mask"), "-")
        lines.append(f"line {lineno}: tl.{call.func.attr} at {ast.unparse(call.args[0])} if {mask}")
    return "\n".join(lines) + "\n"


class TestKernelSource(expecttest.TestCase):
    def test_multi_embedding_fwd_kernel(self):
        # with the helper it calls for its rows and indices
        summary = kernel_summary(multi_embedding._multi_embedding_fwd_kernel) + kernel_summary(multi_embedding._table_rows)
        self.assertExpectedInline(summary, """\
sha256 974cb8aac87edfa7b8710dd5ad374a5421adc6a176abe7e1b85d59f98e9d99a4
args meta_ptr, err_ptr, out_ptr, out_row_stride, N, COLS, VEC, BLOCK_N, BLOCK_D
line 15: tl.load at p_meta + W_PTR if -
line 19: tl.load at p_meta + W_STRIDE if -
line 20: tl.load at p_meta + V if -
line 23: tl.load at p_meta + D if -
line 24: tl.load at p_meta + COL if -
line 28: tl.store at err_ptr + o_n * 0 if m_n & ~m_ok
line 40: tl.load at p_w + o_w[:, None] + o_d[None, :] if m_ok[:, None] & m_d[None, :]
line 41: tl.store at out_ptr + o_out[:, None] + o_d[None, :] if m_n[:, None] & m_d[None, :]
sha256 caeeac504ecc66c04837c1b1fc608d7b5be222bf0085d40a639627c3dc3e53f2
args meta_ptr, N, other, COLS, BLOCK_N
line 8: tl.load at p_meta + I_PTR if -
line 8: tl.load at p_meta + I64 if -
line 8: tl.load at p_meta + I_STRIDE if -
""")
