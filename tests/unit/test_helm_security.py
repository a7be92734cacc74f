"""The Helm chart's security: the locked-down default render (non-root, read-only filesystems, the
restricted API groups, the documented Triton image), HTTP on localhost, TLS and mutual TLS, and the
network policy.
"""

from __future__ import annotations

import yaml

from tests.unit._chart import (
    BASE,
    CHART,
    DEFAULT_GROUPS,
    FULLNAME,
    KUBE_VERSIONS,
    NAMESPACE,
    PROBE,
    ROOT,
    find,
    helm,
    kubernetes_validate,
    merge,
    objects,
    pod_spec,
    render,
    triton_container,
)


def test_default_render_passes_schema_and_kubernetes_validation() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(BASE)
    for obj in objects(render(BASE)):
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, kube_version, strict=True)


def test_default_image_is_the_documented_ngc_release() -> None:
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = triton_container(objects(render(BASE)))
    assert container["image"] == f"nvcr.io/nvidia/tritonserver:{chart_yaml['appVersion']}"
    assert chart_yaml["appVersion"] == "26.11-py3"
    for doc in ("security.md", "deploy.md"):  # the choice and its advisories are documented
        assert "tritonserver:26.11-py3" in (ROOT / "docs" / doc).read_text(), doc
    pinned = triton_container(objects(render(merge(BASE, {"image": {"digest": "sha256:" + "a" * 64}}))))
    assert pinned["image"] == "nvcr.io/nvidia/tritonserver@sha256:" + "a" * 64


def test_default_render_is_locked_down() -> None:
    objs = objects(render(BASE))
    container, spec = triton_container(objs), pod_spec(objs)
    args = container["args"]
    # model control none, the restricted groups on both protocols, HTTP restricted on the pod network
    assert "--model-control-mode=none" in args
    assert f"--http-restricted-api={DEFAULT_GROUPS}:admin-key=$(CVSERVE_RESTRICTED_API_KEY)" in args
    assert f"--grpc-restricted-protocol={DEFAULT_GROUPS}:admin-key=$(CVSERVE_RESTRICTED_API_KEY)" in args
    assert "health" not in DEFAULT_GROUPS and "inference" not in DEFAULT_GROUPS
    assert "--http-address=0.0.0.0" in args
    assert not [a for a in args if a.startswith("--grpc-use-ssl")]
    env = {e["name"]: e for e in container["env"]}
    assert env["CVSERVE_RESTRICTED_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "cvserve-admin-key",
        "key": "key",
    }
    # non-root, read-only root filesystem, nothing extra mounted or injected
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False
    assert find(objs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    # the repository read-only; writable paths are emptyDirs
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert volumes["model-repository"]["persistentVolumeClaim"]["readOnly"] is True
    for path in ("/tmp", "/cache", "/dev/shm"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
        assert not mounts[path].get("readOnly")
    assert {e["name"]: e.get("value") for e in container["env"]}["CUDA_CACHE_PATH"] == "/cache/cuda"
    # optional features off: no TLS, no canary, no network policy
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_security_context_and_writable_dirs(rendered: dict) -> None:
    for scenario, objs in rendered.items():
        spec = pod_spec(objs)
        assert spec["securityContext"]["runAsNonRoot"] is True, scenario
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (scenario, container["name"])
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in triton_container(objs)["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"]
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_synced_repository_is_read_only_for_triton(rendered: dict) -> None:
    spec = pod_spec(rendered["autoscaling-values.yaml"])
    (sync,) = [c for c in spec["initContainers"] if c["name"] == "sync-model-repository"]
    assert not next(m for m in sync["volumeMounts"] if m["mountPath"] == "/models").get("readOnly")
    triton = {
        m["mountPath"]: m for m in triton_container(rendered["autoscaling-values.yaml"])["volumeMounts"]
    }
    assert triton["/models"]["readOnly"] is True and triton["/models-overlay"]["readOnly"] is True


def test_http_on_localhost_leaves_the_network(rendered: dict) -> None:
    objs = rendered["hardened-values.yaml"]
    container = triton_container(objs)
    assert "--http-address=127.0.0.1" in container["args"]
    assert "http" not in {p["name"] for p in container["ports"]}
    assert [p["name"] for p in find(objs, "Service")["spec"]["ports"]] == ["grpc", "metrics"]
    inference, _ = find(objs, "NetworkPolicy")["spec"]["ingress"]
    assert [p["port"] for p in inference["ports"]] == ["grpc"]
    # the kubelet cannot reach 127.0.0.1 of the pod: the probes run inside the container
    assert container["startupProbe"]["exec"]["command"] == [*PROBE, "ready", "--timeout", "4"]
    assert container["readinessProbe"]["exec"]["command"] == [*PROBE, "ready", "--timeout", "4"]
    assert "httpGet" not in container["livenessProbe"]


def test_restricted_groups_on_pod_network_by_default(rendered: dict) -> None:
    for scenario in ("cpu-only-values.yaml", "s3-values.yaml", "autoscaling-values.yaml"):
        args = triton_container(rendered[scenario])["args"]
        assert "--http-address=0.0.0.0" in args
        assert f"--http-restricted-api={DEFAULT_GROUPS}:admin-key=$(CVSERVE_RESTRICTED_API_KEY)" in args
    hardened = triton_container(rendered["hardened-values.yaml"])["args"]
    assert (
        f"--grpc-restricted-protocol={DEFAULT_GROUPS},metadata:admin-key=$(CVSERVE_RESTRICTED_API_KEY)"
        in hardened
    )


def test_tls_values_render_the_grpc_ssl_flags(rendered: dict) -> None:
    objs = rendered["hardened-values.yaml"]
    container, spec = triton_container(objs), pod_spec(objs)
    args = container["args"]
    assert "--grpc-use-ssl=true" in args
    assert "--grpc-server-cert=/etc/cvserve/tls/tls.crt" in args
    assert "--grpc-server-key=/etc/cvserve/tls/tls.key" in args
    assert not [a for a in args if a.startswith(("--grpc-use-ssl-mutual", "--grpc-root-cert"))]
    (tls,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "cvserve-grpc-tls"
    assert {"name": "tls", "mountPath": "/etc/cvserve/tls", "readOnly": True} in container["volumeMounts"]
    test_pod = find(objs, "Pod")["spec"]["containers"][0]["command"]
    assert test_pod[-1] == f"grpcs://{FULLNAME}.{NAMESPACE}.svc:8001"
    mutual = triton_container(
        objects(
            render(
                merge(
                    BASE,
                    {
                        "tls": {"enabled": True, "secretName": "t", "mutual": True},
                        "helmTest": {"enabled": False},
                    },
                )
            )
        )
    )["args"]
    assert "--grpc-use-ssl-mutual=true" in mutual and "--grpc-root-cert=/etc/cvserve/tls/ca.crt" in mutual


def test_helm_test_passes_a_client_certificate_under_mutual_tls() -> None:
    values = merge(
        BASE,
        {
            "tls": {"enabled": True, "secretName": "server-tls", "mutual": True},
            "helmTest": {"clientTlsSecretName": "client-tls"},
        },
    )
    pod = next(o for o in objects(render(values)) if o["kind"] == "Pod" and "test" in o["metadata"]["name"])
    command = pod["spec"]["containers"][0]["command"]
    assert command[command.index("--url") + 1].startswith("grpcs://")
    assert command[command.index("--private-key") + 1] == "/etc/cvserve/client-tls/tls.key"
    assert command[command.index("--certificate-chain") + 1] == "/etc/cvserve/client-tls/tls.crt"
    assert command[command.index("--root-certificates") + 1] == "/etc/cvserve/client-tls/ca.crt"
    [secret] = [v for v in pod["spec"]["volumes"] if "secret" in v]
    assert secret["secret"]["secretName"] == "client-tls"


def test_network_policy(rendered: dict) -> None:
    policy = find(rendered["gpu-values.yaml"], "NetworkPolicy")
    inference, metrics = policy["spec"]["ingress"]
    assert [p["port"] for p in inference["ports"]] == ["http", "grpc"]
    assert inference["from"][0] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}
    }
    assert inference["from"][-1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "helm-test"
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]


def test_network_policy_can_restrict_egress(rendered: dict) -> None:
    policy = find(rendered["hardened-values.yaml"], "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (dns,) = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert find(rendered["gpu-values.yaml"], "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress"]
    bucket = {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    values = merge(BASE, {"networkPolicy": {"enabled": True, "egress": {"enabled": True, "rules": [bucket]}}})
    policy = find(objects(render(values)), "NetworkPolicy")
    assert policy["spec"]["egress"][1] == bucket
    kubernetes_validate.validate(policy, KUBE_VERSIONS[0], strict=True)
