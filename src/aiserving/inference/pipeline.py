"""One batch through a bundle: pre-processing -> one framework call -> post-processing.

Framework-agnostic: the backend only sees stacked arrays. A failure of one
item (unreadable input, vendor code raising) fails that item alone; the rest
of the batch goes on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiserving.backends.base import Backend
from aiserving.bundle.store import Bundle
from aiserving.bundle.vendor import VendorCode
from aiserving.errors import (AiservingError, InferenceError, InputError, ProcessingError,
                              hide_paths)

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One request inside a batch."""

    infer_data: dict  # the request frame given to pre_dataprocess: uuid, path, ...
    index: int = 0  # place in its batch
    pre_out: dict | None = None
    result: Any = None
    error: AiservingError | None = None
    cause: BaseException | None = None  # the vendor exception behind `error`, if any
    # Open Inference Protocol raw tensors: the model's feeds as given (batch axis
    # included), run without the bundle's pre/post-processing; `result` is the outputs.
    tensors: list | None = None

    @property
    def uuid(self) -> str:
        return self.infer_data.get("uuid", "")


@dataclass
class Timings:
    pre: float = 0.0
    infer: float = 0.0
    post: float = 0.0
    items: int = 0
    failed: int = 0


def to_json(value: Any) -> str:
    """JSON text of a post-processing result; numpy values become plain numbers/lists.

    NaN and +/-Infinity, which JSON cannot carry, become `null`: a vendor result
    holding them still reaches the caller as valid JSON.
    """
    try:
        return json.dumps(value, default=_json_default, separators=(",", ":"), allow_nan=False)
    except ValueError:  # only a result holding a non-finite number pays for the walk
        return json.dumps(_finite(value), default=_json_default, separators=(",", ":"),
                          allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, np.floating):
        return _finite(float(value))
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


#: stages reported to `Pipeline.on_stage`: (stage, item index; -1 for the whole batch)
from aiserving.inference.progress import IDLE, INFER, POST, PRE  # noqa: E402 (shared with the node)


def _no_report(stage: int, index: int) -> None:
    pass


class Pipeline:
    def __init__(self, bundle: Bundle, vendor: VendorCode, backend: Backend, on_stage=None,
                 storage: str | None = None):
        self.bundle = bundle
        # The node's storage folder: its paths stay out of what callers are told.
        self.storage = storage
        self.vendor = vendor
        self.backend = backend
        # Told which stage and item run now, so a watchdog outside this process can
        # tell which request a hung batch was stuck on.
        self.on_stage = on_stage or _no_report
        record = bundle.record
        self.labels = list(record.labels)
        self.threshold = record.threshold_values
        self.mapping = list(record.mapping)
        ext = record.ext
        self.input_type = [str(t) for t in ext.get("tensors", {}).get("input_type", [])]
        # Optional override of the batch-of-one rule (see _item_feed).
        self.feed_batched = ext.get("feed_batched")

    def run(self, items: list[Item]) -> Timings:
        return self.complete(items, self.prepare(items))

    def prepare(self, items: list[Item], report: bool = True) -> Timings:
        """Pre-processing of a batch. `report` False: run beside another batch's
        inference (`worker.overlap_pre`), whose stages the watchdog follows."""
        t = Timings(items=len(items))
        t0 = time.perf_counter()
        for n, item in enumerate(items):
            item.index = n
            if item.tensors is None:
                if report:
                    self.on_stage(PRE, n)
                self._pre(item)
        t.pre = time.perf_counter() - t0
        return t

    def complete(self, items: list[Item], t: Timings) -> Timings:
        """Inference and post-processing of a prepared batch."""
        ready = [i for i in items if i.error is None and i.tensors is None]
        if ready:
            self._infer_and_post(ready, t)
        direct = [i for i in items if i.error is None and i.tensors is not None]
        if direct:
            self._infer_direct(direct, t)
        t.failed = sum(1 for i in items if i.error is not None)
        self.on_stage(IDLE, -1)
        return t

    # --- stages ---------------------------------------------------------------

    def _pre(self, item: Item) -> None:
        try:
            out = self.vendor.pre(item.infer_data)
        except Exception as exc:
            self._fail(item, ProcessingError(f"pre-processing failed: {type(exc).__name__}: {exc}"), exc)
            return
        if out is None:
            self._fail(item, InputError("the bundle's pre-processing could not read this input"))
            return
        if not isinstance(out, dict) or not isinstance(out.get("feed_list"), (list, tuple)):
            self._fail(item, ProcessingError("pre-processing must return a dict with a "
                                             "'feed_list' list"))
            return
        try:
            out["feed_list"] = [np.asarray(f) for f in out["feed_list"]]
        except Exception as exc:
            self._fail(item, ProcessingError(f"pre-processing returned a feed that is not an "
                                             f"array: {exc}"), exc)
            return
        item.pre_out = out

    def _infer_and_post(self, ready: list[Item], t: Timings) -> None:
        """One framework call for the batch; items whose shapes do not stack run one by one."""
        try:
            feeds = self._stack(ready)
        except ValueError:
            if len(ready) > 1:
                log.info("bundle %s: items of one batch have different shapes; running them "
                         "one by one", self.bundle.fullhash)
                for item in ready:
                    self._infer_and_post([item], t)
                return
            feeds = None
        except ProcessingError as exc:
            for item in ready:
                self._fail(item, exc)
            return
        if feeds is None:
            self._fail(ready[0], ProcessingError("pre-processing returned feeds that do not "
                                                 "fit together"))
            return
        t1 = time.perf_counter()
        self.on_stage(INFER, ready[0].index if len(ready) == 1 else -1)
        try:
            outputs = self.backend.predict(feeds)
        except Exception as exc:
            log.warning("bundle %s: inference failed: %s: %s", self.bundle.fullhash,
                        type(exc).__name__, exc)
            for item in ready:
                self._fail(item, InferenceError(f"inference failed: {type(exc).__name__}: {exc}"), exc)
            return
        t2 = time.perf_counter()
        t.infer += t2 - t1
        for out in outputs:
            if out.ndim == 0 or out.shape[0] != len(ready):
                err = InferenceError(f"the model returned an output of shape {out.shape} for a "
                                     f"batch of {len(ready)}; outputs need the batch axis first")
                for item in ready:
                    self._fail(item, err)
                return
        for n, item in enumerate(ready):
            self.on_stage(POST, item.index)
            self._post(item, [o[n] for o in outputs])
        t.post += time.perf_counter() - t2

    def _infer_direct(self, items: list[Item], t: Timings) -> None:
        """Raw tensor requests: those whose tensors agree but for the batch axis run as
        one batch (joined along it), unless the model has one-per-batch inputs."""
        groups: dict = {}
        for item in items:
            key = tuple((a.dtype.str, a.shape[1:]) for a in item.tensors)
            joinable = "0" not in self.input_type and all(a.ndim for a in item.tensors)
            groups.setdefault(key if joinable else id(item), []).append(item)
        for group in groups.values():
            t1 = time.perf_counter()
            self.on_stage(INFER, group[0].index if len(group) == 1 else -1)
            feeds = group[0].tensors if len(group) == 1 else [
                np.concatenate(parts) for parts in zip(*(i.tensors for i in group))]
            try:
                outputs = self.backend.predict(feeds)
            except Exception as exc:
                t.infer += time.perf_counter() - t1
                if len(group) > 1:  # one bad request must not fail the others
                    for item in group:
                        self._infer_direct([item], t)
                    continue
                self._fail(group[0], InferenceError(
                    f"inference failed: {type(exc).__name__}: {exc}"), exc)
                continue
            t.infer += time.perf_counter() - t1
            if len(group) == 1:
                group[0].result = outputs
                continue
            sizes = [len(i.tensors[0]) for i in group]
            if any(o.ndim == 0 or o.shape[0] != sum(sizes) for o in outputs):
                err = InferenceError("the model returned an output without the batch axis "
                                     "first; send these requests one at a time")
                for item in group:
                    self._fail(item, err)
                continue
            cuts = np.cumsum(sizes)[:-1]
            for item, parts in zip(group, zip(*(np.split(o, cuts) for o in outputs))):
                item.result = list(parts)

    def _post(self, item: Item, infers: list) -> None:
        try:
            if self.vendor.post_arity == 1:
                item.result = self.vendor.post({
                    "infers": infers, "labels": self.labels, "threshold": self.threshold,
                    "mapping": self.mapping, "passby": item.pre_out.get("passby"),
                })
            else:
                item.result = self.vendor.post(item.pre_out, infers, self.labels)
        except Exception as exc:
            self._fail(item, ProcessingError(f"post-processing failed: {type(exc).__name__}: {exc}"), exc)

    # --- feeds ----------------------------------------------------------------

    def _stack(self, ready: list[Item]) -> list[np.ndarray]:
        n_inputs = len(ready[0].pre_out["feed_list"])
        for item in ready:
            if len(item.pre_out["feed_list"]) != n_inputs:
                raise ProcessingError("items of one batch returned different numbers of feeds")
        ranks = self.backend.input_ranks() or []
        feeds = []
        for k in range(n_inputs):
            if k < len(self.input_type) and self.input_type[k] == "0":
                # One shared value per batch (e.g. an is_train flag), from the first item.
                feeds.append(ready[0].pre_out["feed_list"][k])
                continue
            rank = ranks[k] if k < len(ranks) else None
            arrays = [self._item_feed(item.pre_out["feed_list"][k], rank) for item in ready]
            feeds.append(arrays[0][None] if len(arrays) == 1 else np.stack(arrays))
        return feeds

    def _item_feed(self, array: np.ndarray, rank: int | None) -> np.ndarray:
        """One item's feed without a batch axis.

        Old bundles return a batch of one; only that leading axis is dropped
        (never every size-1 axis, which broke single-channel inputs). Where the
        framework knows the input rank that decides; otherwise modelext
        `feed_batched` does, and failing both a leading 1 on an array of 4 or
        more axes (1xCxHxW, 1xHxWxC) is taken as a batch axis.
        """
        if array.ndim == 0 or array.shape[0] != 1:
            return array
        if rank is not None:
            batched = array.ndim == rank
        elif self.feed_batched is not None:
            batched = bool(self.feed_batched)
        else:
            batched = array.ndim >= 4
        return array[0] if batched else array

    def _fail(self, item: Item, error: AiservingError, cause: BaseException | None = None) -> None:
        if item.error is None:
            item.error, item.cause = error, cause
            # The log gets the message with the request's uuid (and the vendor code's
            # traceback at debug level); the caller gets it without the node's paths.
            log.warning("request %s: %s", item.uuid or "-", error.message,
                        exc_info=cause if cause is not None and log.isEnabledFor(logging.DEBUG)
                        else None)
            if self.storage:
                error.message = hide_paths(error.message, self.storage)
