"""``cvserve k8s status`` without a cluster.

The report logic runs on real ``kubernetes.client`` model objects. The API part runs the real kubernetes
client (kubeconfig loading, request building, JSON deserialisation of the responses) against a small HTTP
server on 127.0.0.1 that answers the three calls the command makes with JSON fixtures shaped like the API
server's answers. What a real API server and a real Triton behind its pod proxy do is not exercised here.
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes.client import (  # noqa: E402
    V1Container,
    V1ContainerPort,
    V1ContainerStatus,
    V1Deployment,
    V1DeploymentCondition,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1LabelSelector,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodSpec,
    V1PodStatus,
    V1PodTemplateSpec,
)

from cvserve.errors import CvserveError, UserInputError  # noqa: E402
from cvserve.k8s import cli  # noqa: E402
from cvserve.k8s.status import (  # noqa: E402
    build_report,
    collect,
    deployment_status,
    format_report,
    parse_repository_index,
    pod_status,
    triton_http_port,
)

NAMESPACE = "ml"
SELECTOR = "app.kubernetes.io/name=cvserve,app.kubernetes.io/instance=rel,app.kubernetes.io/component=triton"
INDEX_READY = [
    {"name": "resnet50", "version": "1", "state": "READY", "reason": ""},
    {"name": "resnet50_network", "version": "1", "state": "READY", "reason": ""},
    {"name": "resnet50_postprocess", "version": "1", "state": "READY", "reason": ""},
    {"name": "resnet50_preprocess", "version": "1", "state": "READY", "reason": ""},
]
INDEX_FAILED = [
    {"name": "resnet50", "version": "1", "state": "UNAVAILABLE", "reason": "composing model failed"},
    {"name": "resnet50_network", "version": "1", "state": "UNAVAILABLE", "reason": "CUDA out of memory"},
]


def make_deployment(
    *,
    generation: int = 3,
    observed: int = 3,
    replicas: int = 2,
    updated: int = 2,
    ready: int = 2,
    available: int = 2,
) -> V1Deployment:
    labels = {"app.kubernetes.io/name": "cvserve"}
    return V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=V1ObjectMeta(name="rel-cvserve", namespace=NAMESPACE, generation=generation),
        spec=V1DeploymentSpec(
            replicas=replicas,
            selector=V1LabelSelector(match_labels=labels),
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=labels), spec=V1PodSpec(containers=[V1Container(name="triton")])
            ),
        ),
        status=V1DeploymentStatus(
            observed_generation=observed,
            replicas=replicas,
            updated_replicas=updated,
            ready_replicas=ready,
            available_replicas=available,
        ),
    )


def make_pod(
    name: str, *, ready: bool = True, phase: str = "Running", restarts: int = 0, port: int = 8000
) -> V1Pod:
    return V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(name=name, namespace=NAMESPACE),
        spec=V1PodSpec(
            node_name="gpu-node-1",
            containers=[
                V1Container(
                    name="triton",
                    ports=[
                        V1ContainerPort(name="grpc", container_port=8001),
                        V1ContainerPort(name="http", container_port=port),
                    ],
                )
            ],
        ),
        status=V1PodStatus(
            phase=phase,
            conditions=[V1PodCondition(type="Ready", status="True" if ready else "False")],
            container_statuses=[
                V1ContainerStatus(
                    name="triton",
                    ready=ready,
                    restart_count=restarts,
                    image="triton",
                    image_id="",
                    started=True,
                )
            ],
        ),
    )


# --- pure report logic on kubernetes.client objects ----------------------------------------------------


def test_rolled_out_deployment() -> None:
    status = deployment_status(make_deployment())
    assert status.rolled_out
    assert (status.generation, status.observed_generation, status.replicas) == (3, 3, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"observed": 2},  # controller has not seen the new spec yet
        {"updated": 1},  # old pods still running
        {"ready": 1},  # a new pod is still loading its models
        {"available": 1},
    ],
)
def test_rolling_deployment(kwargs: dict[str, int]) -> None:
    assert not deployment_status(make_deployment(**kwargs)).rolled_out


def test_deployment_missing_status_fields_count_as_zero() -> None:
    deployment = make_deployment()
    deployment.status = V1DeploymentStatus(observed_generation=3)  # the API omits zero counts
    status = deployment_status(deployment)
    assert (status.updated_replicas, status.ready_replicas, status.available_replicas) == (0, 0, 0)
    assert not status.rolled_out


def test_progress_deadline_is_reported() -> None:
    deployment = make_deployment(ready=1)
    deployment.status.conditions = [
        V1DeploymentCondition(
            type="Progressing",
            status="False",
            reason="ProgressDeadlineExceeded",
            message='ReplicaSet "rel-cvserve-5d9" has timed out progressing.',
        )
    ]
    assert "timed out progressing" in deployment_status(deployment).message


def test_repository_index_parsing() -> None:
    models = parse_repository_index(json.dumps(INDEX_FAILED).encode())
    assert [(m.name, m.state, m.ready) for m in models] == [
        ("resnet50", "UNAVAILABLE", False),
        ("resnet50_network", "UNAVAILABLE", False),
    ]
    assert models[1].reason == "CUDA out of memory"
    # an entry Triton knows but has not loaded (explicit mode) has no version/state
    (unloaded,) = parse_repository_index([{"name": "resnet18"}])
    assert (unloaded.version, unloaded.state, unloaded.ready) == ("", "UNKNOWN", False)
    with pytest.raises(ValueError):
        parse_repository_index(b'{"error": "forbidden"}')


def test_pod_status() -> None:
    ok = pod_status(make_pod("a", restarts=2), json.dumps(INDEX_READY))
    assert ok.ready and ok.models_ready and ok.restarts == 2 and ok.node == "gpu-node-1"
    assert [m.name for m in ok.models] == [e["name"] for e in INDEX_READY]
    failed = pod_status(make_pod("b", ready=False), json.dumps(INDEX_FAILED))
    assert not failed.ready and not failed.models_ready
    unreachable = pod_status(make_pod("c"), CvserveError("503 Service Unavailable"))
    assert unreachable.models is None and unreachable.error == "503 Service Unavailable"
    pending = pod_status(make_pod("d", ready=False, phase="Pending"), None)
    assert pending.models is None and pending.error == ""
    assert not pod_status(make_pod("e"), "[]").models_ready  # an empty repository serves nothing


def test_http_port_comes_from_the_named_port() -> None:
    assert triton_http_port(make_pod("a", port=9000)) == 9000
    pod = make_pod("b")
    pod.spec.containers[0].ports = None
    assert triton_http_port(pod) == 8000


def test_report_healthy_and_text() -> None:
    pods = [make_pod("rel-cvserve-b"), make_pod("rel-cvserve-a")]
    indexes = {"rel-cvserve-a": json.dumps(INDEX_READY), "rel-cvserve-b": json.dumps(INDEX_READY)}
    report = build_report(NAMESPACE, SELECTOR, [make_deployment()], pods, indexes)
    assert report.healthy
    assert [p.name for p in report.pods] == ["rel-cvserve-a", "rel-cvserve-b"]
    text = format_report(report)
    assert "deployment rel-cvserve: rolled out (generation 3, observed 3; replicas 2, updated 2" in text
    assert "pods: 2/2 ready" in text
    assert "resnet50_network v1 READY" in text
    assert text.endswith("healthy")


def test_report_unhealthy_shows_why() -> None:
    pods = [make_pod("rel-cvserve-a"), make_pod("rel-cvserve-new", ready=False)]
    indexes = {"rel-cvserve-a": json.dumps(INDEX_READY), "rel-cvserve-new": json.dumps(INDEX_FAILED)}
    report = build_report(NAMESPACE, SELECTOR, [make_deployment(ready=1, available=1)], pods, indexes)
    assert not report.healthy
    text = format_report(report)
    assert "rolling out" in text
    assert "resnet50_network v1 UNAVAILABLE: CUDA out of memory" in text
    assert text.endswith("NOT healthy")
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["healthy"] is False
    assert as_json["deployments"][0]["rolled_out"] is False
    assert [p["models_ready"] for p in as_json["pods"]] == [True, False]


def test_no_deployment_is_not_healthy() -> None:
    report = build_report(NAMESPACE, SELECTOR, [], [], {})
    assert not report.healthy
    assert "no deployment matches the selector" in format_report(report)


# --- the API calls, through the real kubernetes client --------------------------------------------------


def api_json(obj: Any) -> Any:
    """What the API server sends: camelCase JSON, as the client serialises its own models."""
    return kubernetes.client.ApiClient().sanitize_for_serialization(obj)


class FakeApiServer(ThreadingHTTPServer):
    """Answers list deployments, list pods and the pod proxy to Triton's repository index with fixtures."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.deployments = [make_deployment(ready=1, available=1)]
        self.pods = [
            make_pod("rel-cvserve-a"),
            make_pod("rel-cvserve-b", ready=False),
            make_pod("rel-cvserve-c"),
        ]
        self.pods[2].status.phase = "Pending"
        self.index = {"rel-cvserve-a:8000": INDEX_READY, "rel-cvserve-b:8000": INDEX_FAILED}
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
        path, _, query = self.path.partition("?")
        assert "labelSelector=" in query
        if path == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments":
            items = [api_json(d) for d in self.server.deployments]
            self._reply(
                200, {"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": items}
            )
        elif path == f"/api/v1/namespaces/{NAMESPACE}/pods":
            items = [api_json(p) for p in self.server.pods]
            self._reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        else:
            self._reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
        prefix = f"/api/v1/namespaces/{NAMESPACE}/pods/"
        target, _, rest = urllib.parse.unquote(self.path.removeprefix(prefix)).partition("/")
        if (
            self.path.startswith(prefix)
            and rest == "proxy/v2/repository/index"
            and target in self.server.index
        ):
            self._reply(200, self.server.index[target])
        else:
            self._reply(
                503, {"kind": "Status", "status": "Failure", "reason": "ServiceUnavailable", "code": 503}
            )


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def kubeconfig(api_server: FakeApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": api_server.url}}],
                "users": [{"name": "me", "user": {"token": "t0ken"}}],
                "contexts": [
                    {"name": "test", "context": {"cluster": "local", "user": "me", "namespace": NAMESPACE}}
                ],
                "current-context": "test",
            }
        )
    )
    return path


def test_collect_through_the_kubernetes_client(api_server: FakeApiServer, kubeconfig: Path) -> None:
    from cvserve.k8s.status import load_api_client

    report = collect(load_api_client(str(kubeconfig)), NAMESPACE, SELECTOR, api_key=("admin-key", "s3cret"))
    (deployment,) = report.deployments
    assert (deployment.name, deployment.ready_replicas, deployment.rolled_out) == ("rel-cvserve", 1, False)
    pods = {p.name: p for p in report.pods}
    assert pods["rel-cvserve-a"].models_ready and pods["rel-cvserve-a"].ready
    assert [m.state for m in pods["rel-cvserve-b"].models] == ["UNAVAILABLE", "UNAVAILABLE"]
    assert pods["rel-cvserve-c"].models is None  # Pending: not asked
    assert not report.healthy
    proxied = [(m, p, h) for m, p, h in api_server.requests if m == "POST"]
    # the client percent-encodes the path parameters; the API server routes on the decoded path
    assert sorted(urllib.parse.unquote(p) for _, p, _ in proxied) == [
        f"/api/v1/namespaces/{NAMESPACE}/pods/rel-cvserve-a:8000/proxy/v2/repository/index",
        f"/api/v1/namespaces/{NAMESPACE}/pods/rel-cvserve-b:8000/proxy/v2/repository/index",
    ]
    assert all(h.get("admin-key") == "s3cret" for _, _, h in proxied)
    assert all(h.get("authorization") == "Bearer t0ken" for _, _, h in api_server.requests)


def test_proxy_failure_is_reported_per_pod(api_server: FakeApiServer, kubeconfig: Path) -> None:
    from cvserve.k8s.status import load_api_client

    api_server.index.pop("rel-cvserve-a:8000")
    report = collect(load_api_client(str(kubeconfig)), NAMESPACE, SELECTOR)
    pod = next(p for p in report.pods if p.name == "rel-cvserve-a")
    assert pod.models is None
    assert "503" in pod.error


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cvserve")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return parser.parse_args(argv)


def test_cli_status_json(api_server: FakeApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture) -> None:
    args = parse(["k8s", "status", "--release", "rel", "--kubeconfig", str(kubeconfig), "--json"])
    assert args.func is cli.run
    assert cli.run(args) == 2  # not healthy: a pod is still loading
    out = json.loads(capsys.readouterr().out)
    assert out["namespace"] == NAMESPACE  # from the kubeconfig context
    assert out["selector"] == SELECTOR
    assert out["healthy"] is False
    queries = [urllib.parse.urlsplit(p).query for m, p, _ in api_server.requests if m == "GET"]
    assert [urllib.parse.parse_qs(q)["labelSelector"] for q in queries] == [[SELECTOR], [SELECTOR]]


def test_cli_status_text_healthy(
    api_server: FakeApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture
) -> None:
    api_server.deployments = [make_deployment(replicas=1, updated=1, ready=1, available=1)]
    api_server.pods = [make_pod("rel-cvserve-a")]
    args = parse(
        [
            "k8s",
            "status",
            "-l",
            "app=x",
            "-n",
            NAMESPACE,
            "--kubeconfig",
            str(kubeconfig),
            "--context",
            "test",
        ]
    )
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "deployment rel-cvserve: rolled out" in out
    assert "resnet50 v1 READY" in out


def test_cli_needs_release_or_selector() -> None:
    for argv in (["k8s", "status"], ["k8s", "status", "--release", "a", "--selector", "b"]):
        with pytest.raises(UserInputError, match="either --release NAME or --selector LABELS"):
            cli.run(parse(argv))
    with pytest.raises(UserInputError, match="--selector is empty"):
        cli.selector_for(None, " ")


def test_bad_kubeconfig_is_a_user_error(tmp_path: Path) -> None:
    from cvserve.k8s.status import load_api_client

    missing = tmp_path / "nope"
    missing.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(UserInputError, match="cannot load the Kubernetes configuration"):
        load_api_client(str(missing), "prod")


def test_unreachable_api_server_is_a_cvserve_error(kubeconfig: Path, api_server: FakeApiServer) -> None:
    from cvserve.k8s.status import load_api_client

    client = load_api_client(str(kubeconfig))
    api_server.shutdown()
    api_server.server_close()
    client.configuration.retries = 0
    with pytest.raises(CvserveError, match="cannot reach the Kubernetes API server"):
        collect(client, NAMESPACE, SELECTOR, timeout_s=2)
