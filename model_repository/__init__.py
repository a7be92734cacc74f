"""The python-backend models that ``cvserve build`` copies into a Triton model repository.

These files run inside Triton's python backend (they import ``triton_python_backend_utils``), never in the
cvserve process; the builder finds them through ``importlib.resources``.
"""
