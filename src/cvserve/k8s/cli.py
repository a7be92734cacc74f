"""``cvserve k8s status``: rollout and per-pod model readiness of a deployed Helm release."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from cvserve.errors import UserInputError
from cvserve.settings import add_arguments, duration, from_args, setting

CHART_NAME = "cvserve"


@dataclasses.dataclass(kw_only=True)
class StatusSettings:
    """``cvserve k8s status``'s settings (flags derived by :mod:`cvserve.settings`)."""

    release: str | None = setting(
        None, short="-r", help="Helm release name (selects the chart's pods by its labels); or --selector"
    )
    selector: str | None = setting(
        None, short="-l", help="label selector, e.g. app.kubernetes.io/instance=prod; or --release"
    )
    namespace: str | None = setting(
        None, short="-n", help="namespace", default_help="the context's, else default"
    )
    kubeconfig: str | None = setting(None, help="kubeconfig file", default_help="$KUBECONFIG, ~/.kube/config")
    context: str | None = setting(None, help="kubeconfig context")
    api_key_header: str = setting(
        "admin-key", help="header carrying the model-control key when the chart's restrictedApi is enabled"
    )
    api_key_env: str = setting(
        "CVSERVE_RESTRICTED_API_KEY", help="environment variable holding that key (sent only when set)"
    )
    timeout_s: float = duration(10.0, help="per API request", above=0)
    json: bool = setting(False, help="print the report as JSON")

    def __post_init__(self) -> None:
        if (self.release is None) == (self.selector is None):
            raise UserInputError("give either --release NAME or --selector LABELS (one of them)")

    @property
    def label_selector(self) -> str:
        return selector_for(self.release, self.selector)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "k8s",
        help="inspect cvserve deployments on Kubernetes",
        description="Kubernetes tooling for deployments of the helm/cvserve chart.",
    )
    k8s_sub = p.add_subparsers(dest="k8s_command", metavar="K8S_COMMAND", required=True)
    s = k8s_sub.add_parser(
        "status",
        help="rollout state and, per pod, which models are ready",
        description="Report the Deployment rollout (generation/observed, updated/ready/available replicas) "
        "and, for every Triton pod, the state of each model from its /v2/repository/index, queried through "
        "the API server's pod proxy. Exit status: 0 healthy, 2 not (yet) healthy, 1 error.",
    )
    add_arguments(s, StatusSettings)
    s.set_defaults(func=run)


def selector_for(release: str | None, selector: str | None) -> str:
    """The label selector for a release (the chart's app.kubernetes.io labels) or the one given."""
    if selector is not None:
        if not selector.strip():
            raise UserInputError("--selector is empty: give labels such as app.kubernetes.io/instance=prod")
        return selector
    if not release or not release.strip():
        raise UserInputError("--release is empty: give the Helm release name")
    return f"app.kubernetes.io/name={CHART_NAME},app.kubernetes.io/instance={release},app.kubernetes.io/component=triton"


def current_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the selected kubeconfig context, or ``default``."""
    from cvserve._extras import require

    kubernetes = require("kubernetes", purpose="for cvserve k8s")
    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except (kubernetes.config.ConfigException, OSError):
        return "default"  # in-cluster or no kubeconfig: load_api_client reports real problems
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return (chosen or {}).get("context", {}).get("namespace") or "default"


def run(args: argparse.Namespace) -> int:
    from cvserve.k8s.status import collect, format_report, load_api_client

    st = from_args(StatusSettings, args)
    selector = st.label_selector
    api_client = load_api_client(st.kubeconfig, st.context)
    namespace = st.namespace or current_namespace(st.kubeconfig, st.context)
    key = os.environ.get(st.api_key_env)
    report = collect(
        api_client,
        namespace,
        selector,
        api_key=(st.api_key_header, key) if key else None,
        timeout_s=st.timeout_s,
    )
    if st.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.healthy else 2
