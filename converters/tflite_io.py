"""Give a full-int8 TFLite flatbuffer uint8 inputs and outputs (what the Coral profiles ask for).

Some converters (litert-torch's PT2E path) already hand back int8 at the graph
boundary, with no QUANTIZE/DEQUANTIZE left for TensorFlow's own
modify_model_io_type to rewrite. Here a QUANTIZE op is put in front of each
int8 input (uint8 -> int8, same scale, zero point + 128) and behind each
int8 output (int8 -> uint8), as the Edge TPU compiler expects.
"""

from __future__ import annotations

import numpy as np


def int8_io_to_uint8(flatbuffer: bytes) -> bytes:
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    from tensorflow.lite.python import schema_py_generated as schema
    model = read_model(flatbuffer)
    quant_idx = next((i for i, c in enumerate(model.operatorCodes)
                      if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.QUANTIZE), None)
    if quant_idx is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 1
        model.operatorCodes.append(code)
        quant_idx = len(model.operatorCodes) - 1

    for sg in model.subgraphs:
        def uint8_twin(tensor_index: int, suffix: str) -> int:
            src = sg.tensors[tensor_index]
            if src.type != schema.TensorType.INT8:
                raise ValueError(f"tensor {src.name!r} is not int8")
            t = schema.TensorT()
            t.name = (src.name.decode() if isinstance(src.name, bytes) else src.name) + suffix
            t.shape, t.shapeSignature = np.array(src.shape), src.shapeSignature
            t.type = schema.TensorType.UINT8
            t.buffer = 0
            q = schema.QuantizationParametersT()
            q.scale = [float(src.quantization.scale[0])]
            q.zeroPoint = [int(src.quantization.zeroPoint[0]) + 128]
            t.quantization = q
            sg.tensors.append(t)
            return len(sg.tensors) - 1

        def quantize_op(inp: int, out: int):
            op = schema.OperatorT()
            op.opcodeIndex = quant_idx
            op.inputs, op.outputs = np.array([inp], np.int32), np.array([out], np.int32)
            return op

        new_inputs = []
        for i in list(sg.inputs):
            u = uint8_twin(int(i), "_uint8")
            sg.operators.insert(0, quantize_op(u, int(i)))
            new_inputs.append(u)
        new_outputs = []
        for o in list(sg.outputs):
            u = uint8_twin(int(o), "_uint8")
            sg.operators.append(quantize_op(int(o), u))
            new_outputs.append(u)
        remap = dict(zip(map(int, sg.inputs), new_inputs)) | dict(zip(map(int, sg.outputs), new_outputs))
        sg.inputs, sg.outputs = np.array(new_inputs, np.int32), np.array(new_outputs, np.int32)
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == model.subgraphs.index(sg):
                for item in list(sig.inputs) + list(sig.outputs):
                    item.tensorIndex = remap.get(int(item.tensorIndex), item.tensorIndex)
    return write_model(model)


def read_model(flatbuffer: bytes):
    """The flatbuffer as objects, with constants stored past its end (buffer offsets) pulled inline."""
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    from tensorflow.lite.tools import flatbuffer_utils
    return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))


def write_model(model) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def inline_buffers(flatbuffer: bytes) -> bytes:
    """ai-edge-quantizer may store constants by offset; TensorFlow's rewriting tools expect them inline."""
    return write_model(read_model(flatbuffer))
