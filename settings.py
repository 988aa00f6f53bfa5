# AIServing OnBoard settings (legacy format: a dict named `settings`).
# Every key can be overridden by an environment variable: AISRV_ + the key
# upper-cased with dots as underscores (AISRV_REDIS_HOST, AISRV_HTTP_PORT, ...).
# `python run.py` reads this file; the README lists every key.
settings = {
    # Folder of the JSM bundles (<storage>/models/<implhash>/<version>/), relative to this file.
    "storage": "storage",
    # Image used to warm a model up after loading; empty: a built-in grey image.
    "preheat": "",
    # Redis: leave the host empty to run the embedded one.
    "redis.host": "",
    "redis.port": "6379",
    # REST front.
    "http.host": "127.0.0.1",
    "http.port": 8080,
    # PyTorch: cpu, cuda or cuda:N; "1" loads only matching parameters.
    "be.trpy.device": "cpu",
    "be.trpy.mixed_mode": "0",
}
