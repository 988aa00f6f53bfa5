"""The node daemon, the single writer of backend state: create, load, switch, terminate.

May import config, bundle, backends (their registry only), broker and the inference
process's shared leaves (`inference.progress`, `entry`, `batching`); never api,
numpy or a framework. Empty on purpose, so importing one module pulls no other.
"""
