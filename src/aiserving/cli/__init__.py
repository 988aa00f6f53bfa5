"""The `aiserving` command: serve, demo, bundle tools, and a client of a running node.

The top floor: may import anything below it; nothing of ours imports it but run.py
and `python -m aiserving`.
"""
