"""Where verify's stages stop matching: the first stage, and the first tensor in it, with the size of the
difference.

The stage is the first (after the reference) whose integer logits differ. Its tensor is found on the first
differing image by running that stage's graph and the graph of the stage before it, every tensor kept, and
walking the failing graph in order: a tensor is explained when the earlier graph holds the same values, up to
the NCHW/NHWC layout and a per-tensor scale and offset (a streamlined graph counts in integers where QONNX
counts in scaled floats). Tensors that only move values (im2col, padding, transposes, ...) are skipped: when
one of them is wrong, the next computed tensor is named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MOVES = {"Im2Col", "Transpose", "Reshape", "Flatten", "FMPadding", "ConvolutionInputGenerator", "Pad",
         "StreamingDataWidthConverter", "DuplicateStreams", "Identity", "Squeeze", "Unsqueeze", "TopK",
         "LabelSelect", "Constant", "Shape", "Gather", "Concat", "StreamingConcat"}


TOLERANCE = 1e-5  # relative: float32 stages against a float64 reference


def _generic(op: str) -> str:
    return op[:-4] if op.endswith(("_hls", "_rtl")) else op


def logit_difference(logits: np.ndarray, ref: np.ndarray) -> dict:
    """How far one stage's integer logits are from the reference's."""
    diff = np.abs(logits.astype(np.int64) - ref.astype(np.int64))
    return {"images_differing": int(np.sum(diff.any(axis=1))), "logits_differing": int(np.sum(diff > 0)),
            "logits": int(diff.size), "max_abs_diff": int(diff.max()) if diff.size else 0,
            "first_image": int(np.argmax(diff.any(axis=1))) if diff.any() else None}


def _layouts(a: np.ndarray):
    yield a
    if a.ndim == 4:
        yield a.transpose(0, 2, 3, 1)
        yield a.transpose(0, 3, 1, 2)


def _affine_misfit(t: np.ndarray, r: np.ndarray) -> tuple[int, float]:
    """(elements differing, max abs diff) of t against r itself, else against a*r + b with a and b read off
    the two most common values of r (robust to a few wrong elements of t), or off its extremes when every
    value is distinct. Tolerance: float32 rounding, since the stages run in float32 against a float64 reference."""
    t, r = t.reshape(-1).astype(np.float64), r.reshape(-1).astype(np.float64)

    def misfit(a: float, b: float) -> tuple[int, float]:
        dev = np.abs(t - (a * r + b))
        bad = dev > TOLERANCE * np.maximum(1.0, np.abs(t))
        return int(bad.sum()), float(dev.max()) if dev.size else 0.0

    same = misfit(1.0, 0.0)
    values, counts = np.unique(r, return_counts=True)
    if same[0] == 0 or len(values) < 2:
        return same
    if counts.max() > 1:
        top = values[np.argsort(counts, kind="stable")[-2:]]
        modes = []
        for v in top:
            tv, c = np.unique(t[r == v], return_counts=True)
            modes.append(tv[np.argmax(c)])
    else:
        top = values[[0, -1]]
        modes = [t[r == v][0] for v in top]
    a = (modes[1] - modes[0]) / (top[1] - top[0])
    if a == 0:  # a constant t explains nothing
        return same
    fitted = misfit(a, modes[0] - a * top[0])
    return min(same, fitted)


def _best_match(t: np.ndarray, context: dict[str, np.ndarray]) -> tuple[str | None, int, float]:
    """(name, elements differing, max abs diff) of the earlier graph's tensor closest to t."""
    best = (None, t.size + 1, float("inf"))
    for name, r in context.items():
        r = np.asarray(r)
        if r.size != t.size or r.dtype.kind not in "fiub":
            continue
        for form in _layouts(r):
            if form.shape != t.shape and form.ndim == t.ndim:
                continue  # same size but another layout: not the same tensor (a flattened one is compared flat)
            n, dev = _affine_misfit(t, form)
            if n < best[1]:
                best = (name, n, dev)
            if n == 0:
                return best
    return best


def first_differing_tensor(model, context: dict[str, np.ndarray], earlier: dict[str, np.ndarray]) -> dict | None:
    """The first computed tensor of `model` (run with `context`) not found in the earlier graph's `earlier`."""
    for node in model.graph.node:
        if _generic(node.op_type) in MOVES or model.get_initializer(node.input[0]) is not None:
            continue  # moves data, or prepares a weight (a QONNX weight quantizer): not an activation
        for name in node.output:
            if name not in context:
                continue
            t = np.asarray(context[name])
            match, n, dev = _best_match(t, earlier)
            if match is None:
                n, dev = t.size, float("nan")
            if n:
                return {"tensor": name, "node": node.name, "op_type": node.op_type, "elements_differing": n,
                        "elements": int(t.size), "max_abs_diff": dev, "closest": match}
    return None


def finn_context(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of a FINN graph (bnnflow's functional execution) on x."""
    from .functional import execute_graph

    names = [t for n in model.graph.node for t in n.output if n.op_type != "Constant"]
    return execute_graph(model, x, tensors=names)


def qonnx_context(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of a QONNX graph (qonnx's execute_onnx, float32) on x."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    from .onnx_input import graph_inputs

    m = ModelWrapper(str(path)).transform(ChangeBatchSize(len(x))).transform(InferShapes())
    ctx = execute_onnx(m, {graph_inputs(m)[0].name: x.astype(np.float32)}, return_full_exec_context=True)
    inits = {i.name for i in m.graph.initializer}
    return {k: v for k, v in ctx.items() if k not in inits}


def brevitas_context(net, x: np.ndarray) -> dict[str, np.ndarray]:
    """The output of every module of a Brevitas network (float64, as verify's reference runs it) on x,
    by module name: what a QONNX graph's tensors are matched against."""
    import copy

    import torch

    net = copy.deepcopy(net).to(torch.float64)
    ctx, hooks = {}, []

    def keep(name):
        def hook(mod, inp, out):
            v = getattr(out, "value", out)  # a QuantTensor's values
            if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == len(x):
                key = name if name not in ctx else f"{name}#{sum(k.split('#')[0] == name for k in ctx) + 1}"
                ctx[key] = v.detach().numpy().copy()  # a module called twice (one pool for all) keeps both
        return hook

    for name, module in net.named_modules():
        hooks.append(module.register_forward_hook(keep(name or "output")))
    try:
        with torch.no_grad():
            net(torch.from_numpy(np.ascontiguousarray(x)).to(torch.float64))
    finally:
        for h in hooks:
            h.remove()
    return ctx


def stage_graphs(out_dir: Path, finn: dict, qonnx: dict, brevitas: dict | None = None) -> dict:
    """stage name -> (image index -> every tensor of the stage's graph on that image, the graph):
    finn: name -> (FINN ModelWrapper, its input batch); qonnx: name -> (QONNX file, its input batch);
    brevitas: name -> (Brevitas network, its input batch), a reference with module outputs and no graph."""
    from qonnx.core.modelwrapper import ModelWrapper

    graphs = {name: (lambda i, m=m, x=x: finn_context(m, x[i:i + 1]), m) for name, (m, x) in finn.items()}
    for name, (path, x) in qonnx.items():
        graphs[name] = (lambda i, p=path, x=x: qonnx_context(p, x[i:i + 1]), ModelWrapper(str(path)))
    for name, (net, x) in (brevitas or {}).items():
        if net is not None:
            graphs[name] = (lambda i, n=net, x=x: brevitas_context(n, x[i:i + 1]), None)
    return graphs


def locate(stages, ref, graphs: dict, informative: set[str], reference: str) -> dict | None:
    """The first stage that differs from `ref` and, where it and the stage before it are graphs
    (graphs: see stage_graphs), its first differing tensor."""
    previous = ref.name if ref.name in graphs else None
    for st in stages:
        if st is ref or st.name in informative or st.logits is None:
            continue
        if st.identical == len(st.logits):
            previous = st.name if st.name in graphs else previous
            continue
        found = {"stage": st.name, "reference": reference, **logit_difference(st.logits, ref.logits[:len(st.logits)])}
        if st.name in graphs and previous is not None:
            i = found["first_image"]
            run, model = graphs[st.name]
            run_prev, _ = graphs[previous]
            try:
                tensor = first_differing_tensor(model, run(i), run_prev(i))
            except Exception as exc:  # locating is a help; its failure must not hide the verdict
                tensor = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
            if tensor is not None:
                found["tensor"] = {**tensor, "against": previous}
        return found
    return None


def describe(found: dict) -> str:
    """One sentence naming the stage, the tensor and the size of the difference."""
    text = (f"The first stage that differs from {found['reference']} is '{found['stage']}': "
            f"{found['images_differing']} images with other integer logits, {found['logits_differing']} of "
            f"{found['logits']} logits differ, by up to {found['max_abs_diff']}")
    t = found.get("tensor")
    if t and "tensor" in t:
        text += (f"; on image {found['first_image']} its first differing tensor is {t['tensor']} (output of "
                 f"{t['node']}, {t['op_type']})")
        if t["closest"] is None:
            text += f", which has no tensor of its size in the '{t['against']}' stage"
        else:
            text += (f": {t['elements_differing']:,} of {t['elements']:,} elements differ from the "
                     f"'{t['against']}' stage, by up to {t['max_abs_diff']:g}")
    return text + "."
