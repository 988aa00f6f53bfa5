"""The inference process: read a batch, run it through a bundle, answer; no door.

May import config, bundle, backends, jobs and broker, never api or node. Empty on
purpose: the daemon imports `progress`, `entry` and `batching` and must not pull
numpy or a framework.
"""
