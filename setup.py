"""Package metadata; `pip install -e .` gives the `aiserving` command."""

from setuptools import find_packages, setup

setup(
    name="aiserving-onboard",
    version="1.0.0",
    description="AIServing OnBoard: an edge inference appliance for JSM bundles",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # The device console's page (served by the REST front at /console).
    package_data={"aiserving.api.rest": ["console_static/*.html", "console_static/*.js",
                                         "console_static/*.css"]},
    python_requires=">=3.9",
    entry_points={"console_scripts": ["aiserving=aiserving.cli.app:main"]},
)
