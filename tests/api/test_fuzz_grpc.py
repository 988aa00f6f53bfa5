"""Fuzzing the legacy gRPC API: every rpc of every service, with requests built by
Hypothesis from malformed fields, huge numbers, odd unicode, traversal paths,
broken and bomb images and hostile archives.

A refusal is a legacy ResultReply code or a deliberate gRPC status: never
UNKNOWN or INTERNAL (an exception that escaped), never "internal error" in a
ResultReply, never a hang. The node stays up, the backends the fuzz was not
allowed to name keep serving, and afterwards a good InferenceLocal and
InferenceRemote give the right result. Generation is derandomized.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import uuid as uuidlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support.bundles import expected_result, write_bundle, write_image
from tests.support.grpc_client import (Client, backend_pb2, common_pb2, exchange_pb2,
                                       inference_pb2, model_info, model_pb2)
from tests.support.hostile import (HUGE_INTS, ODD_STRINGS, TRAVERSAL, bomb_png, broken_images,
                                   hostile_archives)

INTERNAL_MESSAGE = "internal error; see the node's log"
LEGACY_CODES = {0, 1, *range(100, 113)}
ESCAPED = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED)
MARKER = f"aisrv-fuzz-{uuidlib.uuid4().hex[:8]}"
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate, Phase.shrink])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.support.node import NodeProcess

    root = tmp_path_factory.mktemp("fuzzgrpc")
    storage = root / "storage"
    good = write_bundle(storage, name="fuzz-good", seed=6)
    # Pictures: the node itself checks images for it (decompression bombs included).
    pictures = write_bundle(storage, name="fuzz-pictures", seed=7, modelext={"input": "image"})
    spare = write_bundle(storage, name="fuzz-spare", labels=["a", "b"], seed=8)
    node = NodeProcess(storage, env={"AISRV_BACKEND_MAX_COUNT": "4",
                                     "AISRV_GRPC_LOAD_TIMEOUT_S": "60"}).start()
    client = Client(node)
    protected = []
    for bundle in (good, pictures):
        made = client.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
            backend=backend_pb2.BackendInfo(impl=bundle.record.impl), model=model_info(bundle.record)))
        assert made.code == 0, made.msg
        protected.append(made.msg)
    files = root / "inputs"
    files.mkdir()
    image = write_image(files / "good.png", seed=12)
    broken = []
    for index, data in enumerate(broken_images(image.read_bytes())):
        broken.append(files / f"broken{index}.png")
        broken[-1].write_bytes(data)
    os.mkfifo(files / "fifo.png")
    (files / "escape.png").symlink_to("/etc/passwd")
    exported = client.model.ExportModelImage(model_info(spare.record))
    assert exported.code == 0, exported.msg
    archives = hostile_archives(MARKER)
    archives["spare, exported"] = client.download(exported.msg)[0]
    yield {"node": node, "client": client, "good": good, "pictures": pictures, "spare": spare,
           "bids": protected, "image": image, "broken": broken, "files": files,
           "archives": archives, "root": root}
    client.close()
    node.stop()


class Hostile:
    """Strategies for each request message, aimed at one node's models and files."""

    def __init__(self, world):
        good, pictures, spare = world["good"], world["pictures"], world["spare"]
        self.world = world
        text = ODD_STRINGS
        known = lambda *values: st.one_of(st.sampled_from(values), text)  # noqa: E731
        self.text = text
        self.u32 = st.one_of(st.sampled_from([v for v in HUGE_INTS if v < 2 ** 32] + [4, 1000, 1001]),
                             st.integers(0, 2 ** 32 - 1))
        self.u64 = st.one_of(st.sampled_from(HUGE_INTS), st.integers(0, 2 ** 64 - 1))
        self.lists = st.one_of(st.lists(text, max_size=6), st.sampled_from(
            [["0.5", "0.5", "0.5"], ["a", "b"], ["l"] * 20_000, ["x" * 300_000] * 3, ["nan", "inf"],
             ["-1e309", "1e-400"]]))
        # The fuzz may name any backend but those it is told to leave serving.
        self.any_bid = known(*world["bids"], "2", "3", "4", "99", "", "-1", " 0", "0x0")
        self.other_bid = self.any_bid.filter(lambda b: b not in world["bids"])
        self.impl = known("pytorch.structureSplit", "pytorch.structureEmbed", "pytorch", ".",
                          "caffe.net", "pytorch.../../x", "tensorflow.graph")
        refs = [(good.record.implhash, "1"), (spare.record.implhash, "1"),
                (pictures.record.implhash, "1"), ("0" * 32, "1"), (spare.record.implhash, "2")]
        self.modelext = known('{"input": "image"}', '{"tensors": {"input": 5}}', "[", "[" * 50_000,
                              '{"prefix": "../../etc/passwd"}', "null", "{}", '{"epoch": 1e999}')
        self.all_refs = self._model(st.sampled_from(refs), model_pb2.ModelInfo)
        # DistroConfig changes names and thresholds: the good model's stay as they are.
        self.spare_refs = st.one_of(
            self._model(st.sampled_from(refs[1:]), model_pb2.ModelInfo),
            self._one_bad(model_pb2.ModelInfo, {
                "implhash": spare.record.implhash, "version": "1", "threshold": ["0.5", "0.5"],
                "mapping": ["A", "B"]}, version=text, threshold=self.lists, mapping=self.lists,
                modelext=self.modelext))
        fresh = {"name": "fresh", "labels": ["a", "b"], "head": "H", "bone": "B",
                 "impl": "pytorch.structureSplit", "version": "1", "threshold": ["0.5", "0.5"],
                 "mapping": ["A", "B"]}
        self.new_models = st.one_of(self.all_refs, self._one_bad(
            model_pb2.ModelInfo, fresh, name=text, labels=self.lists, head=text, bone=text,
            impl=self.impl, version=text, threshold=self.lists, mapping=self.lists,
            modelext=self.modelext))
        fullhashes = known(good.fullhash, spare.fullhash, f"{'0' * 32}-1", "nothex-1",
                           f"{spare.record.implhash}-../../x", f"{spare.record.implhash}-")
        self.brief = self._model(st.sampled_from(refs), model_pb2.ModelInfoBrief,
                                 fullhash=fullhashes)
        self.backend_info = self._backend(self.any_bid)
        self.other_backend_info = self._backend(self.other_bid)
        keys = dict(encrypted=st.one_of(st.sampled_from([0, 1, 2]), self.u32),
                    a64key=known("", "%%%", base64.b64encode(b"k" * 256).decode(), "A" * 100_000),
                    pvtkey=st.one_of(st.sampled_from(TRAVERSAL), text,
                                     st.sampled_from([str(world["files"] / "fifo.png")])))
        self.load = st.builds(backend_pb2.LoadRequest, bid=self.other_bid, model=self.all_refs,
                              **keys)
        self.full_load = st.builds(backend_pb2.FullLoadRequest, backend=self.other_backend_info,
                                   model=self.all_refs, **keys)
        self.full_load_v2 = st.builds(backend_pb2.FullLoadRequestV2,
                                      backend=self.other_backend_info, model=self.brief, **keys)
        files = [str(p) for p in (world["image"], *world["broken"], world["files"],
                                  world["files"] / "fifo.png", world["files"] / "escape.png")]
        payloads = [base64.b64encode(p.read_bytes()).decode() for p in world["broken"]] + [
            base64.b64encode(bomb_png()).decode(), base64.b64encode(world["image"].read_bytes()).decode()]
        self.infer = st.builds(
            inference_pb2.InferRequest, uuid=known("fuzz-job"),
            # Mostly a serving backend, so the checks behind the bid are reached too.
            bid=st.sampled_from([*world["bids"], *world["bids"], None]).flatmap(
                lambda bid: st.just(bid) if bid else self.any_bid),
            path=st.one_of(st.sampled_from(files + list(TRAVERSAL)), text),
            type=known("png", "jpg", "../x", "a" * 1000, "p\x00ng"),
            base64=st.one_of(st.sampled_from(payloads), text,
                             st.sampled_from(["!!!", "====", "A" * 8_000_001, "QUJD\n"])))
        self.ping = st.builds(common_pb2.PingRequest, client=text)
        exported = spare.record.implhash
        self.download = st.lists(st.builds(
            exchange_pb2.BinData, uuid=known(exported, "f" * 32, exported + "/../x", ""),
            size=self.u64), max_size=3)
        self.upload = st.lists(st.builds(
            exchange_pb2.BinData, uuid=text, hash=text, size=self.u64,
            pack=st.builds(exchange_pb2.Block, index=st.one_of(st.sampled_from([0, 1]), self.u64),
                           hash=text, block=st.one_of(st.binary(max_size=64),
                                                      st.just(b"\0" * (2 * 1024 ** 2 + 1))))),
            max_size=5)
        self.archive = st.one_of(st.none(), st.sampled_from(sorted(world["archives"])))

    @staticmethod
    def _one_bad(kind, base: dict, **fields):
        """A request that is good but for one field, so the check of that field answers."""
        return st.sampled_from(sorted(fields)).flatmap(
            lambda name: fields[name].map(lambda value: kind(**{**base, name: value})))

    def _model(self, refs, kind, **extra):
        def build(ref, **fields):
            implhash, version = ref
            if fields.pop("keep_ref"):
                fields.update(implhash=implhash, version=version)
            return kind(**fields)
        return st.builds(
            build, refs, keep_ref=st.booleans(), name=self.text, labels=self.lists,
            bundle=self.text, head=self.text, bone=self.text, impl=self.impl,
            implhash=self.text, version=st.one_of(st.sampled_from(["1", "2", "0"]), self.text),
            threshold=self.lists, mapping=self.lists, modelext=self.modelext, disthash=self.text,
            **extra)

    def _backend(self, bids):
        return st.builds(
            backend_pb2.BackendInfo, bid=bids, impl=self.impl,
            storage=st.one_of(st.sampled_from(TRAVERSAL), self.text),
            preheat=st.one_of(st.sampled_from(["1", "0", "true"]), self.text),
            batchsize=self.u32, inferprocnum=self.u32, exporter=self.text,
            backendext=st.one_of(st.sampled_from([
                '{"device": "cpu"}', '{"device": "cuda:99"}', '{"device": "../../dev/null"}',
                "[]", "1e999", '{"device": {"a": 1}}', "[" * 50_000, "null", '"cpu"',
                '{"device": "' + "x" * 10_000 + '"}']), self.text))


def _status(call):
    """The answer of a call, or its RpcError; an escaped exception or a hang fails."""
    try:
        return call()
    except grpc.RpcError as exc:
        assert exc.code() not in ESCAPED, (exc.code(), exc.details())
        assert "Traceback" not in (exc.details() or "")
        return exc


def _legacy(reply):
    """A ResultReply: a legacy code, never the catch-all of an unexpected exception."""
    assert not isinstance(reply, grpc.RpcError) or reply.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED), reply
    if isinstance(reply, common_pb2.ResultReply):
        assert reply.code in LEGACY_CODES and reply.msg != INTERNAL_MESSAGE, reply
        assert "Traceback" not in reply.msg


@contextlib.contextmanager
def _explained(node):
    """A failed check shows the last traceback the node logged."""
    try:
        yield
    except AssertionError as exc:
        log = node.log()
        at = log.rfind("Traceback")
        raise AssertionError(f"{exc}\n--- node log:\n{log[at - 500:at + 4000] if at >= 0 else ''}") \
            from None


def _import(c, request, archive, archives, timeout):
    if archive is not None:
        ids = c.upload(archives[archive])
        if ids and ids[-1] != "-1":
            request.bundle = ids[-1]
    return c.model.ImportModelDistro(request, timeout=timeout)


def _import_v2(c, request, archive, archives, timeout):
    if archive is not None:
        ids = c.upload(archives[archive])
        if ids and ids[-1] != "-1":
            request.bundle = ids[-1]
    return c.model.ImportModelDistroV2(request, timeout=timeout)


# rpc -> (strategy attribute of Hostile, whether it answers a ResultReply), in the order
# they run: backends made before they are terminated, models deleted last.
RPCS = {
    "Connectivity.Ping": ("ping", False),
    "Connectivity.ListNodeResources": ("ping", False),
    "Backend.ListSupportedType": ("ping", False),
    "Backend.ListRunningBackends": ("ping", False),
    "Backend.ListBackend": ("backend_info", False),
    "Backend.InitializeBackend": ("other_backend_info", True),
    "Backend.ReloadModelOnBackend": ("load", True),
    "Backend.CreateAndLoadModel": ("full_load", True),
    "Backend.CreateAndLoadModelV2": ("full_load_v2", True),
    "Backend.TerminateBackend": ("other_backend_info", True),
    "Model.ListModels": ("ping", False),
    "Model.CreateModel": ("new_models", True),
    "Model.DistroConfig": ("spare_refs", True),
    "Model.ExportModelImage": ("all_refs", True),
    "Inference.InferenceLocal": ("infer", True),
    "Inference.InferenceRemote": ("infer", True),
}


def _call(client, rpc: str, request, timeout: float):
    """Client stub method `Service.Method` (the stub attribute is the service in lower case)."""
    service, method = rpc.split(".")
    return getattr(getattr(client, service.lower()), method)(request, timeout=timeout)


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@pytest.mark.parametrize("rpc", list(RPCS))
def test_unary_rpcs_answer_hostile_requests_cleanly(world, rpc):
    _fuzz_unary(world, rpc, *RPCS[rpc])


def _fuzz_unary(world, rpc, strategy, legacy):
    hostile = Hostile(world)
    client = world["client"]

    @FUZZ
    @given(request=getattr(hostile, strategy))
    def fuzz(request):
        with _explained(world["node"]):
            answer = _status(lambda: _call(client, rpc, request, 120))
            if legacy:
                _legacy(answer)

    fuzz()
    assert world["node"].proc.poll() is None, world["node"].log()


@pytest.mark.parametrize("rpc", ["Model.ImportModelDistro", "Model.ImportModelDistroV2"])
def test_imports_refuse_hostile_archives_cleanly(world, rpc):
    hostile = Hostile(world)
    client = world["client"]
    kind, run = (("all_refs", _import) if rpc.endswith("Distro")
                 else ("brief", _import_v2))

    @FUZZ
    @given(request=getattr(hostile, kind), archive=hostile.archive)
    def fuzz(request, archive):
        with _explained(world["node"]):
            _legacy(_status(lambda: run(client, request, archive, world["archives"], 120)))

    fuzz()
    # Nothing an archive named outside the import folder was written.
    strays = [p for p in (Path("/tmp"), world["root"], world["root"].parent)
              for p in p.glob(f"{MARKER}*")]
    assert strays == []


def test_delete_model_answers_hostile_requests_cleanly(world):
    _fuzz_unary(world, "Model.DeleteModel", "all_refs", True)
    assert world["good"].path.exists()  # in use by a backend: never deleted


def test_exchange_streams_answer_hostile_chunks_cleanly(world):
    hostile = Hostile(world)
    client = world["client"]
    exported = world["spare"].record.implhash

    @FUZZ
    @given(chunks=hostile.upload, wanted=hostile.download)
    def fuzz(chunks, wanted):
        answers = _status(lambda: list(client.exchange.UploadBin(iter(chunks), timeout=60)))
        if not isinstance(answers, grpc.RpcError):
            assert all(re.fullmatch(r"[0-9a-f]{32}|-1", a.uuid) for a in answers), answers
        answers = _status(lambda: list(client.exchange.DownloadBin(iter(wanted), timeout=60)))
        if not isinstance(answers, grpc.RpcError):
            # Data only ever comes for an image ExportModelImage made, by its implhash.
            assert {a.uuid for a in answers} <= {exported}, {a.uuid for a in answers}

    fuzz()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["/trueno.Backend/ListBackend", "/trueno.Model/CreateModel",
                               "/trueno.Inference/InferenceRemote", "/trueno.Connectivity/Ping",
                               "/trueno.Backend/CreateAndLoadModelV2"]),
       payload=st.one_of(st.binary(max_size=200), st.sampled_from([
           b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 11,
           b"\x12\x05ab", b"\x0b\x0c", b"\x0a\x03\xed\xa0\x80"])))
def test_bytes_that_are_not_the_message_do_not_escape(world, method, payload):
    """Raw wire bytes no client library would send: broken varints, invalid UTF-8."""
    call = world["client"].channel.unary_unary(method)  # no (de)serializer: raw bytes
    try:
        call(payload, timeout=30)
    except grpc.RpcError as exc:
        # What does not parse is the caller's mistake: INVALID_ARGUMENT naming the rpc.
        assert exc.code() not in ESCAPED, exc
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            assert f"not a valid message for {method}" in exc.details(), exc.details()
    assert world["node"].proc.poll() is None


def test_a_good_request_is_served_correctly_afterwards(world):
    node, c, good, image = world["node"], world["client"], world["good"], world["image"]
    assert node.proc.poll() is None, node.log()
    ping = common_pb2.PingRequest(client="tests")
    assert c.model.ListModels(ping, timeout=30).models  # still answerable, whatever was made
    running = {b.info.bid: b for b in c.backend.ListRunningBackends(ping, timeout=30).backends}
    good_bid = world["bids"][0]
    assert running[good_bid].model.implhash == good.record.implhash
    assert json.loads(running[good_bid].status)["0"] == 4
    # Loading the good model again finds it running where it was (legacy code 102).
    again = c.backend.CreateAndLoadModel(backend_pb2.FullLoadRequest(
        backend=backend_pb2.BackendInfo(impl=good.record.impl), model=model_info(good.record)))
    assert (again.code, again.msg) == (102, good_bid)
    expected = expected_result(good, image)
    local = c.inference.InferenceLocal(inference_pb2.InferRequest(
        bid=good_bid, uuid="after-local", path=str(image)))
    assert (local.code, local.msg) == (0, "after-local")
    remote = c.inference.InferenceRemote(inference_pb2.InferRequest(
        bid=good_bid, uuid="after-remote", type="png",
        base64=base64.b64encode(image.read_bytes()).decode()))
    assert (remote.code, remote.msg) == (0, "after-remote")
    for uuid in ("after-local", "after-remote"):
        result = c.wait_result(uuid)
        assert result["label"] == expected["label"] and result["name"] == expected["name"]
        np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-4, atol=1e-5)
    assert c.wait_result("after-local")["path"] == str(image)
    log = node.log()
    for sign in ("gRPC operation failed", "Traceback", "Exception calling application",
                 "Exception iterating", "unexpected error"):
        assert sign not in log, log[log.find(sign) - 2000: log.find(sign) + 2000]
