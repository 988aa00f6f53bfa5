"""The frameworks: per-backend devices, threads and process counts."""

from __future__ import annotations

import re

from aiserving.config.checks import Setting, non_negative, one_of, port, positive, torch_device

TITLE = "Frameworks and backends"

SETTINGS: tuple[Setting, ...] = (
    # legacy keys (contract, section 4)
    Setting("be.tfsrv.host", "127.0.0.1", "str", "TensorFlow Serving host (tensorflow-serving backend)."),
    Setting("be.tfsrv.adapter", "restful", "str",
            "How to reach TensorFlow Serving: `restful` (REST predict API on "
            "`be.tfsrv.rest_port`) or `grpc` (PredictionService on `be.tfsrv.grpc_port`).",
            one_of("restful", "grpc")),
    Setting("be.tfsrv.grpc_port", 8500, "int", "TensorFlow Serving gRPC port.", port),
    Setting("be.tfsrv.rest_port", 8501, "int", "TensorFlow Serving REST port.", port),
    Setting("be.trpy.mixed_mode", False, "bool",
            "PyTorch structureSplit: load only the parameters whose names and shapes match "
            "the structure, warn for the rest (legacy value \"1\")."),
    Setting("be.trpy.device", "cpu", "str",
            "PyTorch device: `cpu`, `cuda` or `cuda:N`; falls back to cpu with a warning "
            "when CUDA is absent.", torch_device),
    Setting("be.trpy.threads", 0, "int",
            "PyTorch CPU threads per inference process; 0: half the cores (at least 1), "
            "leaving the rest to pre/post-processing, the fronts and redis.", non_negative),
    Setting("be.rknnpy.target", "rk3399pro", "str", "Rockchip NPU target of the rknn backend."),
    Setting("be.rknnpy.core_mask", "auto", "str",
            "RK3588 NPU cores an rknn backend runs on: `auto`, `0`, `1`, `2`, `0_1`, `0_1_2` "
            "or `all` (other targets have one core and ignore it).",
            one_of("auto", "0", "1", "2", "0_1", "0_1_2", "all")),
    Setting("be.tfsrv.timeout_s", 10.0, "float",
            "Longest one TensorFlow Serving predict call may take before the batch fails.",
            positive),
    Setting("be.tf.device", "auto", "str",
            "TensorFlow device (tensorflow backend): `auto` (a GPU where TensorFlow sees one, "
            "else the CPU), `cpu`, `gpu`/`cuda` or `gpu:N`/`cuda:N`; a backend's own `device` "
            "wins.", lambda v: None if re.fullmatch(r"auto|cpu|(gpu|cuda)(:\d+)?", v)
            else "must be 'auto', 'cpu', 'gpu' or 'gpu:N'"),
    Setting("be.onnx.providers", [], "list",
            "ONNX Runtime execution providers in order of preference (e.g. "
            "`CUDAExecutionProvider,CPUExecutionProvider`); empty: CUDA where onnxruntime "
            "offers it, then the CPU. Providers this onnxruntime lacks are skipped with a "
            "warning."),
    Setting("be.mxnet.device", "cpu", "str",
            "MXNet context: `cpu`, `gpu` or `gpu:N`; falls back to cpu with a warning where "
            "no GPU is usable.", lambda v: None if re.fullmatch(r"cpu|gpu(:\d+)?", v)
            else "must be 'cpu', 'gpu' or 'gpu:N'"),
    Setting("backend.threads", 0, "int",
            "CPU threads per inference process of the TensorFlow, TF-Lite, ONNX and MXNet "
            "backends; 0: half the cores (at least 1), as for PyTorch.", non_negative),
    # keys of this product
    Setting("backend.inferprocnum", 0, "int",
            "Default inference processes per backend. 0: chosen from the box and the model: "
            "at most one per core up to the legacy limit of 2 (1 on a GPU), as many as the "
            "model's measured cost per item calls for (one for a model much cheaper than "
            "the request path); the CPU threads per process (`backend.threads`, "
            "`be.trpy.threads` left 0) share the cores out among the most.",
            lambda v: None if 0 <= v <= 2 else "must be 0 (automatic), 1 or 2"),
    Setting("backend.max_count", 8, "int", "Most backends one node runs.", positive),
)
