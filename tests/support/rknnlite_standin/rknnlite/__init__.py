"""A stand-in for rknn-toolkit-lite2's `rknnlite` package, for tests on hosts without an NPU.

The real package installs only on aarch64 boards and needs a Rockchip NPU. This
one has the same import path (`from rknnlite.api import RKNNLite`) and mirrors
`RKNNLite` of rknn-toolkit-lite2 2.3.2: the same method signatures, the same
`NPU_CORE_*` constants, the same return conventions (0 success, -1 failure;
`inference` returns a list of numpy arrays, or None on failure, and logs why).

What it runs is its own: a "stand-in .rknn" file is a magic header followed by
an .npz (read with allow_pickle=False) holding the weights of a small fixed
network and its compiled input shape (rknn_batch_size, H, W, C), NHWC:

    logits = relu(flatten(x) @ w1 + b1) @ w2 + b2;  outputs: [logits, softmax(logits)]

computed with numpy in float32. Like a real .rknn model it takes only its compiled
input size (a batch-1 model refuses a batch of 4); a file without the header is
refused by init_runtime with -1, as the real runtime refuses a file that is not a
.rknn model. Tests put its folder on PYTHONPATH only where the real package is
absent; `tests/support/rknn_models.py` writes its model files.
"""
