"""The floor of the REST front: a minimal Flask app answering a fixed JSON body,
served by the same gunicorn worker class and settings as the node's front
(`bench_serving.py --floor` starts it)."""

from flask import Flask, Response

app = Flask("floor")
BODY = b'{"status":"success","result":{"label":"circle"},"message":"","uuid":"x"}'


@app.post("/api/v1alpha/detect")
def detect():
    return Response(BODY, 200, mimetype="application/json")
