"""Kubernetes tooling for cvserve deployments: ``cvserve k8s status`` (the Helm chart lives in helm/cvserve).

Needs the ``k8s`` extra (``pip install 'cvserve[k8s]'``); the ``kubernetes`` package is imported only inside
the functions that use it.
"""
