"""Minimal patched copies of the two finn-rtllib files Verilator rejects (finn-plus 1.6.1).

Both are legal SystemVerilog that Vivado accepts; Verilator 5.048 refuses them:

* `mvu/add_multi.sv` (MVAU_rtl, the adder tree): the constant function `init_leaf_loads()` and its
  typedef are declared inside the `genTree` generate block ("Constant function may not be declared
  under generate", IEEE 1800-2023 13.4.3). The patch moves both, unchanged, to module scope.
* `fifo/hdl/fifo.sv` (StreamingFIFO_rtl): the constant function `INIT_ABITS()` returns an unpacked
  struct, which Verilator cannot evaluate as a constant. The patch computes the same two fields
  with two int-valued constant functions (ABITS_LO, ABITS_HI).

The copies are written into the build folder at simulation time; site-packages is never changed.
A source that no longer contains the text a patch expects raises PatchError (the node then runs as
FINN's Python model, labelled so).
"""

from __future__ import annotations

from pathlib import Path


class PatchError(Exception):
    pass


def _indent_less(block: str) -> str:
    return "".join(line[1:] if line.startswith("\t") else line for line in block.splitlines(keepends=True))


def patch_add_multi(text: str) -> str:
    """Hoist `leaf_load_t`, `init_leaf_loads()` and `LEAF_LOAD` out of the genTree generate block."""
    begin = text.find("\t\t// Compute the count of decendents")
    end_marker = "localparam leaf_load_t   LEAF_LOAD = init_leaf_loads();\n"
    end = text.find(end_marker)
    anchor = "\tuwire [SUM_WIDTH-1:0]  sum0;\n"
    if begin < 0 or end < begin or anchor not in text[:begin]:
        raise PatchError("add_multi.sv: the generate-scoped init_leaf_loads() was not found")
    end += len(end_marker)
    block = _indent_less(text[begin:end])
    rest = text[:begin] + text[end:]
    note = "\t// bnnflow: moved out of genTree for Verilator (constant function under generate)\n"
    return rest.replace(anchor, note + block + "\n" + anchor, 1)


FIFO_ABITS = """\t// bnnflow: INIT_ABITS() returned an unpacked struct, which Verilator cannot evaluate as a
\t// constant; the same geometry as two int-valued constant functions
\tfunction int unsigned INIT_ABITS_LO();
\t\tautomatic int unsigned  lo = $clog2(DEPTH_REQ);
\t\tif(lo > MIN_ABITS && $clog2(DEPTH_REQ - 2**(lo-1)) < lo - 1)  lo--;
\t\treturn  lo;
\tendfunction
\tfunction int unsigned INIT_ABITS_HI();
\t\tautomatic int unsigned  lo = $clog2(DEPTH_REQ);
\t\tautomatic int unsigned  hi;
\t\tif(lo <= MIN_ABITS)  return  0;
\t\thi = $clog2(DEPTH_REQ - 2**(lo-1));
\t\tif(hi >= lo - 1)  return  0;
\t\treturn  hi < 1? 1 : hi;
\tendfunction
\tlocalparam int unsigned  ABITS_LO = INIT_ABITS_LO();
\tlocalparam int unsigned  ABITS_HI = INIT_ABITS_HI();
"""


def patch_fifo(text: str) -> str:
    """Replace the struct-valued INIT_ABITS() by two int-valued functions; ABITS.lo/.hi -> ABITS_LO/_HI."""
    begin = text.find("\ttypedef struct {\n\t\tint unsigned  lo;")
    end_marker = "localparam abits_t       ABITS      = INIT_ABITS();\n"
    end = text.find(end_marker)
    if begin < 0 or end < begin:
        raise PatchError("fifo.sv: the struct-valued INIT_ABITS() was not found")
    out = text[:begin] + FIFO_ABITS + text[end + len(end_marker):]
    out = out.replace("ABITS.lo", "ABITS_LO").replace("ABITS.hi", "ABITS_HI")
    if "abits_t" in out or "ABITS." in out:
        raise PatchError("fifo.sv: INIT_ABITS()'s struct is used in a way the patch does not cover")
    return out


PATCHES = {"add_multi.sv": patch_add_multi, "fifo.sv": patch_fifo}


def patched_sources(files: list[Path], dest: Path) -> tuple[list[Path], list[str]]:
    """files with every file PATCHES knows replaced by a patched copy in dest; and the names patched."""
    out, names = [], []
    for f in files:
        patch = PATCHES.get(f.name)
        if patch is None:
            out.append(f)
            continue
        dest.mkdir(parents=True, exist_ok=True)
        copy = dest / f.name
        text = patch(f.read_text())
        if not copy.is_file() or copy.read_text() != text:
            copy.write_text(text)
        out.append(copy)
        names.append(f.name)
    return out, names
