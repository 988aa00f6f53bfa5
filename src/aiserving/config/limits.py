"""Limits on what callers send: uploads, imports, bundle records, request sizes, input folders."""

from __future__ import annotations

from aiserving.config.checks import Setting, positive

TITLE = "Limits"

SETTINGS: tuple[Setting, ...] = (
    # keys of this product
    Setting("upload.ttl_s", 3600, "int",
            "Seconds an upload (gRPC UploadBin) is kept if no import uses it; an older one "
            "is gone (an import naming it answers 104).", positive),
    Setting("upload.max_bytes", 500 * 2 * 1024 ** 2, "int",
            "Largest single upload (the legacy bound: 500 chunks of 2 MiB); past it the "
            "upload is refused (uuid `-1`, then RESOURCE_EXHAUSTED) and its file removed.",
            positive),
    Setting("upload.max_total_bytes", 2 * 1024 ** 3, "int",
            "Most bytes all uploads not yet imported (in progress or finished) may hold on "
            "disk at once; an upload that would pass it is refused (uuid `-1`, then "
            "RESOURCE_EXHAUSTED) and its file removed.", positive),
    Setting("import.max_bytes", 2 * 1024 ** 3, "int",
            "Most bytes a model archive may unpack to; larger archives are refused.", positive),
    Setting("model.max_labels", 10_000, "int",
            "Most labels a model record may have in CreateModel, DistroConfig and imports.",
            positive),
    Setting("model.max_record_bytes", 1024 ** 2, "int",
            "Largest model record (distros.json) CreateModel, DistroConfig and imports "
            "accept: ListModels answers every record at once.", positive),
    Setting("import.max_entries", 10_000, "int",
            "Most entries a model archive may have; counted while reading, before anything "
            "is written.", positive),
    Setting("import.max_ratio", 200.0, "float",
            "Most unpacked bytes per archive byte a model archive may have (a small archive "
            "that unpacks to a disk-filling one is refused).", positive),
    Setting("request.max_image_bytes", 32 * 1024 ** 2, "int",
            "Largest input accepted: an inline one (gRPC InferenceRemote) or a file named by "
            "`/detect` or InferenceLocal.", positive),
    Setting("input.roots", [], "list",
            "Folders `/detect` and InferenceLocal may read input files from (symlinks are "
            "resolved first; a relative path is taken from the settings file's folder). "
            "Empty: `<storage>/input`, `<storage>/demo` and the system temp folder "
            "(`/tmp`)."),
    Setting("request.max_pixels", 100_000_000, "int",
            "Most pixels an image may have: Pillow (in the front and in vendor code) and "
            "OpenCV refuse larger ones from their header, before decoding, so a "
            "decompression bomb is a clear 4xx error, not a node out of memory.", positive),
    Setting("request.timeout_s", 60.0, "float",
            "Longest a blocking `/detect` waits for its result.", positive),
)
