"""/openapi.json describes exactly the routes the REST app has (but `/v2`: the Open
Inference Protocol's routes are described by the KServe v2 specification)."""

import json

from aiserving.api.rest import openapi
from aiserving.api.rest.app import create_app
from aiserving.config import Settings


def test_the_description_matches_the_apps_routes(redis_url, tmp_path):
    values = Settings.load(environ={"AISRV_STORAGE": str(tmp_path)}).as_dict()
    values["redis.url"] = redis_url
    app = create_app(Settings(values))
    routes = {(rule.rule, method.lower()) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}
              # the device console's page and its own calls are not the API (api/console.py)
              # nor are the Open Inference Protocol's (api/rest/oip.py, the KServe v2 spec)
              if rule.endpoint != "static" and not rule.endpoint.startswith(("console.", "oip."))}
    doc = openapi.document()
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert described == routes
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200 and json.loads(served.data) == json.loads(json.dumps(doc))
    assert doc["openapi"].startswith("3.")
    for path, ops in doc["paths"].items():  # every answer documented, every ref resolvable
        for op in ops.values():
            assert "200" in op["responses"], path
            for ref in _refs(op):
                assert ref.rsplit("/", 1)[-1] in doc["components"]["schemas"], ref


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
