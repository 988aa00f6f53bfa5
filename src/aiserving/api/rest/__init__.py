"""The REST front under gunicorn: the legacy `/api/v1alpha`, OIP v2 over HTTP, the fleet
routes, the console and its page, `/openapi.json`; errors mapped to HTTP once (`common`).
"""
