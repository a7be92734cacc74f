"""Rollout and per-pod model readiness of a cvserve (Triton) deployment on Kubernetes.

The report is built by pure functions from Kubernetes API objects (``kubernetes.client`` models) and the
JSON each Triton pod returns for ``POST /v2/repository/index``; :func:`collect` is the thin part that calls
the API server (deployments, pods, and the pod proxy to each Triton's HTTP port).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cvserve._extras import require
from cvserve.errors import CvserveError, UserInputError

TRITON_HTTP_PORT_NAME = "http"
TRITON_HTTP_DEFAULT_PORT = 8000
INDEX_PATH = "v2/repository/index"


@dataclass(frozen=True)
class ModelState:
    """One entry of Triton's repository index."""

    name: str
    version: str
    state: str
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "READY"


@dataclass(frozen=True)
class DeploymentStatus:
    """Rollout state of one Deployment, as ``kubectl rollout status`` judges it."""

    name: str
    generation: int
    observed_generation: int
    replicas: int
    updated_replicas: int
    ready_replicas: int
    available_replicas: int
    message: str = ""

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated_replicas == self.replicas
            and self.ready_replicas == self.replicas
            and self.available_replicas == self.replicas
        )


@dataclass(frozen=True)
class PodStatus:
    """One Triton pod: Kubernetes readiness and, when its server answered, the state of every model."""

    name: str
    phase: str
    ready: bool
    node: str
    restarts: int
    models: list[ModelState] | None = None
    error: str = ""

    @property
    def models_ready(self) -> bool:
        return self.models is not None and all(m.ready for m in self.models) and bool(self.models)


@dataclass(frozen=True)
class Report:
    """Everything ``cvserve k8s status`` prints."""

    namespace: str
    selector: str
    deployments: list[DeploymentStatus]
    pods: list[PodStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return (
            bool(self.deployments)
            and all(d.rolled_out for d in self.deployments)
            and bool(self.pods)
            and all(p.ready and p.models_ready for p in self.pods)
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["healthy"] = self.healthy
        for dep, src in zip(out["deployments"], self.deployments, strict=True):
            dep["rolled_out"] = src.rolled_out
        for pod, src in zip(out["pods"], self.pods, strict=True):
            pod["models_ready"] = src.models_ready
        return out


def deployment_status(deployment: Any) -> DeploymentStatus:
    """Rollout numbers of a ``V1Deployment`` (absent status fields count as 0, as the API omits zeros)."""
    status = deployment.status
    spec_replicas = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    message = ""
    for condition in status.conditions if status and status.conditions else []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            message = condition.message or "progress deadline exceeded"
        elif condition.type == "ReplicaFailure" and condition.status == "True":
            message = condition.message or "replica failure"
    return DeploymentStatus(
        name=deployment.metadata.name,
        generation=deployment.metadata.generation or 0,
        observed_generation=(status.observed_generation or 0) if status else 0,
        replicas=spec_replicas,
        updated_replicas=(status.updated_replicas or 0) if status else 0,
        ready_replicas=(status.ready_replicas or 0) if status else 0,
        available_replicas=(status.available_replicas or 0) if status else 0,
        message=message,
    )


def pod_ready(pod: Any) -> bool:
    conditions = pod.status.conditions if pod.status and pod.status.conditions else []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def triton_http_port(pod: Any) -> int:
    """The container port named ``http`` (the chart's name for Triton's HTTP endpoint)."""
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            if port.name == TRITON_HTTP_PORT_NAME:
                return port.container_port
    return TRITON_HTTP_DEFAULT_PORT


def parse_repository_index(payload: bytes | str | list[dict[str, Any]]) -> list[ModelState]:
    """Models from Triton's repository index response (a JSON list of {name, version, state, reason})."""
    entries = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
    if not isinstance(entries, list):
        raise ValueError(f"repository index is not a list: {str(entries)[:200]}")
    models = [
        ModelState(
            name=str(e.get("name", "")),
            version=str(e.get("version", "")),
            state=str(e.get("state", "UNKNOWN") or "UNKNOWN"),
            reason=str(e.get("reason", "") or ""),
        )
        for e in entries
    ]
    return sorted(models, key=lambda m: (m.name, m.version))


def pod_status(pod: Any, index: bytes | str | list[dict[str, Any]] | Exception | None) -> PodStatus:
    """A ``V1Pod`` with the answer of its Triton index: the payload, the error getting it, or None (not asked)."""
    statuses = pod.status.container_statuses if pod.status and pod.status.container_statuses else []
    models, error = None, ""
    if isinstance(index, Exception):
        error = str(index) or type(index).__name__
    elif index is not None:
        try:
            models = parse_repository_index(index)
        except ValueError as exc:
            error = f"unexpected repository index: {exc}"
    return PodStatus(
        name=pod.metadata.name,
        phase=(pod.status.phase if pod.status else None) or "Unknown",
        ready=pod_ready(pod),
        node=pod.spec.node_name or "",
        restarts=sum(s.restart_count or 0 for s in statuses),
        models=models,
        error=error,
    )


def build_report(
    namespace: str,
    selector: str,
    deployments: list[Any],
    pods: list[Any],
    indexes: dict[str, bytes | str | list[dict[str, Any]] | Exception],
) -> Report:
    """Assemble the report from API objects and the per-pod index answers (keyed by pod name)."""
    return Report(
        namespace=namespace,
        selector=selector,
        deployments=sorted((deployment_status(d) for d in deployments), key=lambda d: d.name),
        pods=sorted((pod_status(p, indexes.get(p.metadata.name)) for p in pods), key=lambda p: p.name),
    )


def format_report(report: Report) -> str:
    """Human-readable report."""
    lines = [f"namespace {report.namespace}, selector {report.selector}"]
    if not report.deployments:
        lines.append("no deployment matches the selector")
    for d in report.deployments:
        state = "rolled out" if d.rolled_out else "rolling out"
        lines.append(
            f"deployment {d.name}: {state} (generation {d.generation}, observed {d.observed_generation}; "
            f"replicas {d.replicas}, updated {d.updated_replicas}, ready {d.ready_replicas}, "
            f"available {d.available_replicas})"
        )
        if d.message:
            lines.append(f"  {d.message}")
    ready = sum(p.ready for p in report.pods)
    lines.append(f"pods: {ready}/{len(report.pods)} ready")
    for p in report.pods:
        lines.append(
            f"  {p.name} ({p.phase}, {'ready' if p.ready else 'not ready'}, node {p.node or '-'}, "
            f"restarts {p.restarts})"
        )
        if p.error:
            lines.append(f"    models: unknown ({p.error})")
        elif p.models is None:
            lines.append("    models: not queried (pod not running)")
        elif not p.models:
            lines.append("    models: none in the repository")
        for m in p.models or []:
            reason = f": {m.reason}" if m.reason else ""
            lines.append(f"    {m.name} v{m.version or '-'} {m.state}{reason}")
    lines.append("healthy" if report.healthy else "NOT healthy")
    return "\n".join(lines)


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ``ApiClient`` from a kubeconfig (default resolution: $KUBECONFIG, ~/.kube/config) or in-cluster."""
    kubernetes = require("kubernetes", purpose="for cvserve k8s")
    config = kubernetes.config
    try:
        if kubeconfig or context:
            return config.new_client_from_config(config_file=kubeconfig, context=context)
        try:
            return config.new_client_from_config()
        except config.ConfigException:
            config.load_incluster_config()
            return kubernetes.client.ApiClient()
    except (config.ConfigException, OSError) as exc:
        raise UserInputError(
            f"cannot load the Kubernetes configuration: {exc} (pass --kubeconfig/--context or set KUBECONFIG)"
        ) from None


def collect(
    api_client: Any,
    namespace: str,
    selector: str,
    *,
    api_key: tuple[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Report:
    """Read the deployments and pods matching ``selector`` and ask each running pod's Triton for its models.

    Args:
        api_client: a ``kubernetes.client.ApiClient`` (see :func:`load_api_client`).
        namespace: namespace of the release.
        selector: label selector, e.g. ``app.kubernetes.io/instance=prod``.
        api_key: (header, value) when the chart restricts the model-repository API (restrictedApi).
        timeout_s: per-request timeout.
    """
    kubernetes = require("kubernetes", purpose="for cvserve k8s")
    import urllib3  # a dependency of kubernetes

    ApiException = kubernetes.client.exceptions.ApiException
    unreachable = (OSError, urllib3.exceptions.HTTPError)
    apps = kubernetes.client.AppsV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    try:
        deployments = apps.list_namespaced_deployment(
            namespace, label_selector=selector, _request_timeout=timeout_s
        )
        pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=timeout_s)
    except ApiException as exc:
        raise CvserveError(
            f"Kubernetes API error listing {namespace}/{selector}: {exc.status} {exc.reason}"
        ) from None
    except unreachable as exc:
        raise CvserveError(f"cannot reach the Kubernetes API server: {exc}") from None
    if api_key:  # a default header works on every kubernetes client version (``_headers`` is recent)
        api_client.set_default_header(*api_key)
    indexes: dict[str, Any] = {}
    for pod in pods.items:
        if not pod.status or pod.status.phase != "Running":
            continue
        target = f"{pod.metadata.name}:{triton_http_port(pod)}"
        try:
            # Triton's repository index is a POST (an optional JSON body filters it).
            response = core.connect_post_namespaced_pod_proxy_with_path(
                target,
                namespace,
                INDEX_PATH,
                _preload_content=False,
                _request_timeout=timeout_s,
            )
            indexes[pod.metadata.name] = response.data
        except ApiException as exc:
            indexes[pod.metadata.name] = CvserveError(
                f"Triton index via pod proxy: {exc.status} {exc.reason}"
            )
        except unreachable as exc:
            indexes[pod.metadata.name] = CvserveError(f"Triton index via pod proxy: {exc}")
    return build_report(namespace, selector, deployments.items, pods.items, indexes)
