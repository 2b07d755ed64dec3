"""int8 scoring for `ltrec export --int8`: the product of the user states with the item table, the largest op of
a bundle (users × items × d multiply-adds), rewritten as onnxruntime's DynamicQuantizeMatMul. Each item's row is
stored as int8 with its own scale; the states are quantised per call. The float table stays for the input
lookup. Everything else in the graph (encoder, ensemble members, exclusion, top-K) stays float32. The ranking
moves a little, so export measures how much against torch (ltrec/deploy/export.py) before writing anything.
"""

from __future__ import annotations

import numpy as np

from ltrec.files.errors import UserError

CONTRIB = "com.microsoft"  # DynamicQuantizeMatMul ships in every onnxruntime CPU build


def _table_products(graph, n_items: int):
    """(node, table (items, d) float32) for each Gemm or MatMul that multiplies by the item table: its second
    input an initializer with n_items or n_items + 1 rows (or columns, when stored transposed)."""
    from onnx import numpy_helper

    inits = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and (
            attrs.get("transA")
            and attrs["transA"].i
            or any(name in attrs and attrs[name].f != 1.0 for name in ("alpha", "beta"))
        ):
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.dtype != np.float32:
            continue
        trans_b = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i == 1
        table = weight if trans_b else weight.T  # (items, d)
        if table.shape[0] in (n_items, n_items + 1) and table.shape[1] < table.shape[0]:
            yield node, table


def quantize_table(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-item int8: (d, items) int8 and (items,) float32 scales, row ≈ scale · q. A zero row
    (padding) keeps scale 1, so no division by zero and its scores stay exactly 0."""
    peak = np.abs(table).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scale


def quantize_scoring(model_bytes: bytes, n_items: int) -> bytes:
    """The graph with every item-table product in int8; a UserError where it has none (a model that scores
    without the table: popularity, the fitted linear models)."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(model_bytes)
    graph = proto.graph
    found = list(_table_products(graph, n_items))
    if not found:
        raise UserError(
            "--int8: this model scores items without an item-table product (popularity, EASE, transitions), "
            "so there is nothing to quantise; export it without --int8"
        )
    for i, (node, table) in enumerate(found):
        q, scale = quantize_table(table)
        names = (f"ltrec_int8_table_{i}", f"ltrec_int8_scale_{i}")
        graph.initializer.extend([numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1])])
        bias = list(node.input[2:3])
        # the fused op takes a bias of one value per item; a per-user one (the ensemble's shift) is added after
        fused_bias = bias and _is_item_vector(graph, bias[0], table.shape[0])
        product = list(node.output) if not bias or fused_bias else [f"{node.output[0]}_int8"]
        inputs = [node.input[0], *names, "", *(bias if fused_bias else [])]
        new = [helper.make_node("DynamicQuantizeMatMul", inputs, product, domain=CONTRIB, name=f"int8_scores_{i}")]
        if bias and not fused_bias:
            new.append(helper.make_node("Add", [product[0], bias[0]], list(node.output), name=f"int8_bias_{i}"))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for j, n in enumerate(new):
            graph.node.insert(at + j, n)
    _drop_unused_initializers(graph)
    if not any(op.domain == CONTRIB for op in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    return proto.SerializeToString()


def _is_item_vector(graph, name: str, items: int) -> bool:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).shape == (items,)
    for node in graph.node:  # the exporter may emit a constant bias as a Constant node
        if node.op_type == "Constant" and name in node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return value is not None and tuple(value.dims) == (items,)
    return False


def _drop_unused_initializers(graph) -> None:
    """A table stored transposed only for the product is no longer read: keep the file from holding it twice."""
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
