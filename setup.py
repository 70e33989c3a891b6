"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

tasks/ (task definitions and data) is installed as the package `harness._tasks`, so that a
non-editable `pip install .` finds it through importlib.resources.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["harness", "harness.*", "judges", "judges.*"])
packages += ["harness.organism.checkpoint", "harness.organism.direct"]  # the shipped organisms (data only)
packages += ["harness._tasks"] + [f"harness._tasks.{p}" for p in find_packages("tasks")]

setup(packages=packages, package_dir={"harness._tasks": "tasks"})
