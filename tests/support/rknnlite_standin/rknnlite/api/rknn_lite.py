"""Stand-in `RKNNLite` (see the package docstring): real signatures, numpy inside."""

from __future__ import annotations

import io
import os
import sys

import numpy as np

MAGIC = b"AISRV-RKNN-STANDIN-1\n"


def _log_error(message: str) -> None:
    print(f"E RKNN: {message}", file=sys.stderr, flush=True)  # what the real one prints


class _Runtime:
    """The loaded network (what the real RKNNRuntime holds after build_graph)."""

    def __init__(self, data: bytes):
        if not data.startswith(MAGIC):
            raise ValueError("not a stand-in .rknn model (bad header)")
        with np.load(io.BytesIO(data[len(MAGIC):]), allow_pickle=False) as npz:
            self.weights = {k: np.asarray(npz[k], dtype=np.float32)
                            for k in ("w1", "b1", "w2", "b2")}
            self.input_shape = tuple(int(d) for d in npz["input_shape"])  # (batch, H, W, C)
        if len(self.input_shape) != 4:
            raise ValueError("input_shape must be (rknn_batch_size, H, W, C)")

    def run(self, inputs, data_format) -> list[np.ndarray]:
        if len(inputs) != 1:
            raise ValueError(f"the model has 1 input, {len(inputs)} given")
        fmt = data_format[0] if isinstance(data_format, (list, tuple)) else data_format
        x = np.asarray(inputs[0])
        if x.dtype.kind not in "biuf":
            raise TypeError(f"input type {x.dtype} is not supported")
        x = x.astype(np.float32)
        b, h, w, c = self.input_shape
        if fmt == "nchw" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        elif fmt not in (None, "nhwc"):
            raise ValueError(f"data_format {fmt!r} is not supported")
        if x.size != b * h * w * c:
            raise ValueError(f"input size {x.size} (shape {x.shape}) does not fit the model's "
                             f"input {self.input_shape}")
        x = x.reshape(b, h * w * c)
        wt = self.weights
        logits = np.maximum(x @ wt["w1"] + wt["b1"], 0.0) @ wt["w2"] + wt["b2"]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return [logits, exp / exp.sum(axis=1, keepdims=True)]


class RKNNLite:

    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xffff

    def __init__(self, verbose=False, verbose_file=None):
        self.verbose = verbose
        self.target = "simulator"
        self.rknn_data = None
        self.rknn_runtime = None

    def load_rknn(self, path):
        """:return: success: 0, failure: -1"""
        if path is None or not os.path.exists(path):
            _log_error(f"Invalid RKNN model path: {path}")
            return -1
        try:
            with open(path, "rb") as f:
                self.rknn_data = f.read()
        except OSError as exc:
            _log_error(f"Catch exception when loading RKNN model [{path}]! {exc}")
            return -1
        return 0

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO):
        """:return: success: 0, failure: -1"""
        if target is not None:
            _log_error(f"stand-in: no device {target!r} to connect to "
                       "(target=None: the NPU inside)")
            return -1
        if self.rknn_data is None:
            _log_error("Model is not loaded yet, this interface should be called after load_rknn!")
            return -1
        if core_mask not in (0, 1, 2, 4, 3, 7, 0xffff):
            _log_error(f"Catch exception when set npu core mode. (core_mask {core_mask!r})")
            return -1
        self.rknn_runtime = None
        try:
            self.rknn_runtime = _Runtime(self.rknn_data)
        except Exception as exc:
            _log_error(f"Catch exception when init runtime! {type(exc).__name__}: {exc}")
            return -1
        return 0

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None,
                  get_frame_id=False):
        """:return: Output data (ndarray list), or None on failure"""
        if self.rknn_runtime is None:
            _log_error("Runtime environment is not inited, please call init_runtime to init it "
                       "first!")
            return None
        try:
            outputs = self.rknn_runtime.run(inputs, data_format)
        except Exception as exc:
            _log_error(f"Catch exception when setting inputs. {type(exc).__name__}: {exc}")
            return None
        if get_frame_id:
            outputs.append(0)
        return outputs

    def get_sdk_version(self):
        if self.rknn_runtime is None:
            _log_error("Runtime environment is not inited, please call init_runtime to init it "
                       "first!")
            return None
        return "stand-in (rknn-toolkit-lite2 2.3.2 API)"

    def list_support_target_platform(self, rknn_model=None):
        return {}

    def release(self):
        """:return: None"""
        self.rknn_runtime = None
