"""What a request becomes on its way to a worker: input checks and OIP tensor jobs.

Both sides of the queue import it (the doors and the inference process), so it holds
leaves only: numpy and Pillow, errors; never api, node, inference, broker or redis.
"""
