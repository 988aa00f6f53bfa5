"""Redis plumbing, no policy: connections, the embedded redis, key names, job streams,
replies and the records the fronts read.

May import config and errors only; never node, inference, api or backends.
"""
