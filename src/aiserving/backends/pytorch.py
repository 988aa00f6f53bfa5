"""PyTorch backend: `pytorch.structureSplit` and `pytorch.structureEmbed`.

structureSplit: the bundle's `model.py` defines `build_structure()`, weights
are in `param.pth` as `{"state_dict": ...}` and are loaded with
`weights_only=True` (a vendor file can carry no code). structureEmbed: the
whole model is one TorchScript file, `model_core`.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Sequence

import numpy as np
import torch

from aiserving.backends.base import Backend, cpu_threads
from aiserving.bundle.store import Bundle
from aiserving.bundle.vendor import load_module
from aiserving.errors import BundleError

log = logging.getLogger(__name__)


class TorchBackend(Backend):
    type_name = "pytorch"

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self._model = None
        self._device = torch.device("cpu")
        self._names: dict = {}

    @property
    def device(self) -> str:
        return str(self._device)

    def load(self, bundle: Bundle, device: str | None = None) -> None:
        self._device = _pick_device(device or self.settings.get("be.trpy.device", "cpu"))
        torch.set_num_threads(cpu_threads(self.settings, "be.trpy.threads"))
        kind = bundle.record.model_type
        if kind == "structureSplit":
            model = self._load_split(bundle)
        elif kind == "structureEmbed":
            model = self._load_embed(bundle)
        else:
            raise BundleError(f"bundle {bundle.fullhash}: pytorch model type {kind!r} is not "
                              "supported (structureSplit, structureEmbed)")
        self._model = model.to(self._device).eval()
        tensors = bundle.record.ext.get("tensors")
        self._names = tensors if isinstance(tensors, dict) else {}

    def tensor_specs(self) -> dict | None:
        # TorchScript keeps no tensor names: those modelext lists, else (from the trial
        # batch at load) INPUT__0, OUTPUT__0, ... as Triton's pytorch backend names them.
        def named(key: str):
            names = self._names.get(key)
            return [{"name": str(n)} for n in names] if isinstance(names, list) and names \
                else None
        return {"inputs": named("input"), "outputs": named("output")}

    def _load_split(self, bundle: Bundle) -> torch.nn.Module:
        bundle.refuse_encrypted("structureSplit has no model_core (encrypt a structureEmbed "
                                "TorchScript model)")
        build = getattr(load_module(bundle, "model.py"), "build_structure", None)
        if not callable(build):
            raise BundleError(f"bundle {bundle.fullhash}: model.py defines no build_structure()")
        model = build()
        if not isinstance(model, torch.nn.Module):
            raise BundleError(f"bundle {bundle.fullhash}: build_structure() returned "
                              f"{type(model).__name__}, not a torch.nn.Module")
        try:
            saved = torch.load(io.BytesIO(bundle.read("param.pth")), map_location=self._device,
                               weights_only=True)
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"bundle {bundle.fullhash}: param.pth cannot be loaded as "
                              f"weights: {type(exc).__name__}: {exc}") from None
        state = saved.get("state_dict", saved) if isinstance(saved, dict) else None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise BundleError(f"bundle {bundle.fullhash}: param.pth must hold "
                              "{'state_dict': {name: tensor}}")
        # Weights saved from nn.DataParallel carry a "module." prefix.
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        if self.settings.get("be.trpy.mixed_mode"):
            state = _matching_part(model, state, bundle.fullhash)
            model.load_state_dict(state, strict=False)
        else:
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise BundleError(f"bundle {bundle.fullhash}: param.pth does not fit the "
                                  f"structure (set be.trpy.mixed_mode to load what matches): "
                                  f"{exc}") from None
        return model

    def _load_embed(self, bundle: Bundle) -> torch.nn.Module:
        try:
            return torch.jit.load(io.BytesIO(bundle.read("model_core")),
                                  map_location=self._device)
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"bundle {bundle.fullhash}: model_core is not a TorchScript "
                              f"file (structureEmbed needs torch.jit.save output): "
                              f"{type(exc).__name__}: {exc}") from None

    def predict(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(f)).to(self._device) for f in feeds]
        with torch.inference_mode():
            out = self._model(*tensors)
        return [t.detach().cpu().numpy() for t in _flatten(out)]

    def unload(self) -> None:
        self._model = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def _pick_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            log.warning("be.trpy.device is %s but CUDA is not available here: using cpu", name)
            return torch.device("cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            log.warning("be.trpy.device is %s but only %d CUDA device(s) exist: using cuda:0",
                        name, torch.cuda.device_count())
            return torch.device("cuda:0")
    return device


def _matching_part(model: torch.nn.Module, state: dict, fullhash: str) -> dict:
    """Mixed mode: keep the parameters whose name and shape match, warn for the rest."""
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(keep))
    missing = sorted(set(own) - set(keep))
    if skipped:
        log.warning("bundle %s: mixed mode skips %d saved parameter(s) that do not match: %s",
                    fullhash, len(skipped), ", ".join(skipped[:10]))
    if missing:
        log.warning("bundle %s: mixed mode leaves %d parameter(s) at their initial value: %s",
                    fullhash, len(missing), ", ".join(missing[:10]))
    return keep


def _flatten(out) -> list:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    raise TypeError(f"model returned {type(out).__name__}; expected tensors")
