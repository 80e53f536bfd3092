"""Static checks of k8s/: every overlay renders offline with `kubectl kustomize`, passes strict
schema validation for Kubernetes 1.32 (`kubernetes-validate`), and the rendered objects say what
matters: non-root containers with limits, credentials only by reference, the images of
images.env, Services and NetworkPolicies that select the pods they mean to.

The Secret generators read git-ignored env files; the tests render a copy of k8s/ in which those
files are the committed examples (placeholders).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from test_containers import read_images_env

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.32.0"
OVERLAYS = ["kind", "gpu"]
#: Overlays shipped beside them for optional components: gpu-trainer is gpu plus
#: components/kubeflow-trainer (docs/kubernetes.md shows it verbatim).
SHIPPED_WITH_COMPONENTS = {"gpu-trainer": "kubeflow-trainer"}
#: The label the pipeline sets on its pods (kfp-kubernetes add_pod_label) to reach MinIO and
#: the Pushgateway; documented in docs/kubernetes.md.
PIPELINE_LABEL = ("app.kubernetes.io/part-of", "mammo-pipeline")
PIPELINE_NAMESPACES = {"kubeflow", "mammo"}
#: Images built by this project; their kind/gpu values come from images.env.
PROFILE_IMAGE_KEYS = {"kind": {"TRAIN_IMAGE_CPU", "EVAL_IMAGE"}, "gpu": {"TRAIN_IMAGE", "EVAL_IMAGE"}}
#: Operator CRDs the schema validator cannot know; checked structurally (ServiceMonitor) or
#: against the vendored CRD (TrainingRuntime, Kubeflow Trainer v2.3.0) below instead.
CRD_KINDS = {"ServiceMonitor", "TrainingRuntime", "PrometheusRule"}
#: Overlays the tests add: the documented way to use each optional component.
WITH_COMPONENTS = {
    "gpu-servicemonitor": "servicemonitor",
    "gpu-prometheusrule": "prometheusrule", "gpu-private-registry": "private-registry",
}
#: The pipeline pods' egress policies in namespace kubeflow (k8s/base/kubeflow/networkpolicies.yaml).
EGRESS_POLICIES = ("mammo-pipeline-default-deny-egress", "mammo-pipeline-egress", "mammo-pipeline-egress-kube-apiserver")
#: Where pipeline pods may connect: (namespace, pod labels, protocol, port); the Kubernetes API
#: is an ipBlock, narrowed by scripts/cluster-apply.sh.
EGRESS_ALLOWED = {
    ("kube-system", (("k8s-app", "kube-dns"),), "UDP", 53),
    ("kube-system", (("k8s-app", "kube-dns"),), "TCP", 53),
    ("mammo", (("app.kubernetes.io/name", "minio"),), "TCP", 9000),
    ("mammo", (("app.kubernetes.io/name", "pushgateway"),), "TCP", 9091),
    ("kubeflow", (("app", "ml-pipeline"),), "TCP", 8887),
    ("kubeflow", (("component", "metadata-grpc-server"),), "TCP", 8080),
    ("kubeflow", (("app", "seaweedfs"),), "TCP", 8333),
    ("kubeflow", (("app", "minio"),), "TCP", 9000),
    ("0.0.0.0/0", (), "TCP", 443),
    ("0.0.0.0/0", (), "TCP", 6443),
}
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|ROOT_USER", re.I)


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k8s/ with the example env files in place of the real, git-ignored ones."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH (it renders the overlays offline)")
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "k8s", copy, ignore=shutil.ignore_patterns("minio.env", "minio-promoter.env"))
    for example in copy.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    # The documented way to add an optional component: an overlay on gpu that names it.
    for overlay, component in WITH_COMPONENTS.items():
        folder = copy / "overlays" / overlay
        folder.mkdir()
        (folder / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [../gpu]\ncomponents: [../../components/{component}]\n"
        )
    return copy


def _render(k8s_copy: Path, overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(k8s_copy / "overlays" / overlay)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(k8s_copy: Path) -> dict[str, list[dict[str, Any]]]:
    return {overlay: _render(k8s_copy, overlay) for overlay in [*OVERLAYS, *SHIPPED_WITH_COMPONENTS, *WITH_COMPONENTS]}


def _objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None):
    found = [
        doc for doc in _objects(docs, kind)
        if doc["metadata"]["name"] == name
        and (namespace is None or doc["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{kind} {namespace}/{name}: {len(found)} found"
    return found[0]


def _pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(workload name, namespace, pod template) for every object that makes pods."""
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            template = spec["template"]
        elif doc["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
        else:
            continue
        yield doc["metadata"]["name"], doc["metadata"]["namespace"], template


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _selected_namespaces(selector: dict[str, Any], candidates: set[str]) -> set[str]:
    return {ns for ns in candidates if _selects(selector, {"kubernetes.io/metadata.name": ns})}


def _container_ports(template: dict[str, Any]) -> dict[Any, int]:
    ports: dict[Any, int] = {}
    for container in _containers(template):
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


@pytest.mark.parametrize("overlay", [*OVERLAYS, *SHIPPED_WITH_COMPONENTS, *WITH_COMPONENTS])
def test_overlay_passes_strict_schema_validation(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    docs = [doc for doc in rendered[overlay] if doc["kind"] not in CRD_KINDS]
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(validator), "--strict", "-k", K8S_VERSION, str(manifest)],
        capture_output=True, text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count(" passed for resource ") == len(docs), output


def test_servicemonitor_scrapes_the_pushgateway_service(
    rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered["gpu-servicemonitor"]
    monitor = _one(docs, "ServiceMonitor", "pushgateway", "mammo")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _one(docs, "Service", "pushgateway", "mammo")
    assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["mammo"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True
    # Without the component, no overlay needs the Prometheus Operator's CRD.
    for overlay in OVERLAYS:
        assert not _objects(rendered[overlay], "ServiceMonitor")


def test_kubeflow_trainer_runtime_matches_its_crd_and_the_launcher(
    rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """The TrainingRuntime of k8s/components/kubeflow-trainer: valid for Trainer v2.3.0's CRD
    (strictly: no field the API server would drop), named and placed as the launcher expects,
    and its nodes get what the pipeline's own trainer pods get (our image, MinIO by reference,
    the label MinIO admits, /dev/shm, restricted security, limits)."""
    from fake_k8s import CRD_DIR, crd_schema, strict, validation_errors
    from mammo_components.trainjob import launcher

    docs = rendered["gpu-trainer"]
    runtime = _one(docs, "TrainingRuntime", launcher.TRAINING_RUNTIME)
    schema = strict(crd_schema(CRD_DIR / "trainer.kubeflow.org_trainingruntimes.yaml"))
    assert validation_errors(runtime, schema) == []
    assert runtime["apiVersion"] == f"{launcher.GROUP}/{launcher.VERSION}"
    namespace = runtime["metadata"]["namespace"]
    # The pipeline's runtime objects (and its runs) are in the runtime's namespace.
    _one(docs, "ConfigMap", "mammo-runtime", namespace)
    _one(docs, "ServiceAccount", "mammo-pipeline", namespace)
    assert runtime["spec"]["mlPolicy"]["torch"] == {}
    [node] = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == launcher.NODE
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][PIPELINE_LABEL[0]] == PIPELINE_LABEL[1]
    [container] = pod["spec"]["containers"]
    assert container["name"] == launcher.NODE
    assert container["image"] == read_images_env()["TRAIN_IMAGE"]
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): set(d["data"]) for d in _objects(docs, "Secret")}
    sources = {next(iter(source)): source[next(iter(source))]["name"] for source in container["envFrom"]}
    assert secrets[(namespace, sources["secretRef"])] == {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
    assert sources["configMapRef"] == "mammo-runtime"
    assert not any(CREDENTIAL_NAME.search(env["name"]) for env in container.get("env", []))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    security = {**pod["spec"]["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    # The nodes reach MinIO: its NetworkPolicy admits the label in the runtime's namespace.
    policy = _one(docs, "NetworkPolicy", "minio-clients", "mammo")
    assert any(
        peer["podSelector"].get("matchLabels") == dict([PIPELINE_LABEL])
        and namespace in _selected_namespaces(peer["namespaceSelector"], {namespace})
        for rule in policy["spec"]["ingress"] for peer in rule["from"] if "namespaceSelector" in peer
    )
    # Without the component, no overlay needs Kubeflow Trainer's CRDs.
    for overlay in OVERLAYS:
        assert not _objects(rendered[overlay], "TrainingRuntime")


def test_kubeflow_trainer_rbac_is_what_the_launcher_uses(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-trainer"]
    binding = _one(docs, "RoleBinding", "mammo-trainjob-launcher", "kubeflow")
    account = _one(docs, "ServiceAccount", "mammo-pipeline", "kubeflow")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kubeflow"}]
    role = _one(docs, "Role", binding["roleRef"]["name"], "kubeflow")
    granted = {
        (group, resource, verb)
        for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
    }
    # Exactly the launcher's calls: poll its TrainJob by name, list node pods by label, read a log.
    wanted = {("trainer.kubeflow.org", "trainjobs", verb) for verb in ("create", "get", "delete")}
    wanted |= {("", "pods", "list"), ("", "pods/log", "get")}
    assert granted == wanted  # nothing more (no Secrets, no wildcards, no watch or patch)
    # The launcher's 403 hint names this component.
    from mammo_components.trainjob.launcher import RBAC_HINT

    assert "k8s/components/kubeflow-trainer" in RBAC_HINT and (ROOT / "k8s/components/kubeflow-trainer").is_dir()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_restricted_and_limited(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    templates = list(_pod_templates(rendered[overlay]))
    assert {name for name, _, _ in templates} == {"minio", "minio-setup", "pushgateway", "mammo-retrain"}
    for name, _, template in templates:
        pod = template["spec"].get("securityContext", {})
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in _containers(template):
            where = f"{name}/{container['name']}"
            security = {**pod, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 0) != 0, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            resources = container.get("resources", {})
            for bound in ["requests", "limits"]:
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"
        if any(doc["kind"] == "Deployment" and doc["metadata"]["name"] == name
               for doc in rendered[overlay]):
            ports = _container_ports(template)
            for container in _containers(template):
                for probe in ["readinessProbe", "livenessProbe"]:
                    assert container[probe]["httpGet"]["port"] in ports, f"{name}: {probe}"
    namespace = _one(rendered[overlay], "Namespace", "mammo")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_kind_is_smaller_than_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def sizes(overlay: str) -> tuple[str, str]:
        docs = rendered[overlay]
        pvc = _one(docs, "PersistentVolumeClaim", "minio-data", "mammo")
        minio = _one(docs, "Deployment", "minio", "mammo")
        memory = minio["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        return pvc["spec"]["resources"]["requests"]["storage"], memory

    assert sizes("kind") == ("20Gi", "1Gi")
    assert sizes("gpu") == ("200Gi", "8Gi")


def _image_names(docs: list[dict[str, Any]]) -> set[str]:
    return {c["image"] for _, _, t in _pod_templates(docs) for c in _containers(t)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_images_are_those_of_images_env(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    images = read_images_env()
    registry = images["MAMMO_REGISTRY"]
    used = _image_names(rendered[overlay])
    own = {image for image in used if image.startswith(f"{registry}/") or "mammo-" in image}
    assert own == {images["EVAL_IMAGE"]}
    assert own <= {images[key] for key in PROFILE_IMAGE_KEYS[overlay]}
    for image in used - own:  # third-party images: pinned, never :latest
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), image


@pytest.mark.parametrize(("overlay", "profile"), [("kind", "kind"), ("gpu", "gpu")])
def test_scheduled_retraining_is_suspended_and_uses_the_profile(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, profile: str
) -> None:
    cronjob = _one(rendered[overlay], "CronJob", "mammo-retrain", "mammo")
    assert cronjob["spec"]["suspend"] is True
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mammo-retrain"
    (container,) = pod["containers"]
    assert container["args"][:2] == ["pipeline", "submit"]
    assert f"--profile={profile}" in container["args"] and "--wait" in container["args"]
    if overlay == "kind":
        assert container["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_only_by_reference(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    secrets = {
        (doc["metadata"]["namespace"], doc["metadata"]["name"]): set(doc["data"])
        for doc in _objects(docs, "Secret")
    }
    assert secrets == {
        ("mammo", "mammo-minio"): {
            "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
            "MINIO_PROMOTER_ACCESS_KEY", "MINIO_PROMOTER_SECRET_KEY",
        },
        # Pipeline pods get the bucket users' keys, never MinIO's root credentials: the
        # pipeline user's, and the promoter's (the only one that may write models/).
        ("kubeflow", "mammo-minio"): {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"},
        ("kubeflow", "mammo-minio-promoter"): {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"},
    }
    for name, namespace, template in _pod_templates(docs):
        for container in _containers(template):
            for env in container.get("env", []):
                reference = env.get("valueFrom", {}).get("secretKeyRef")
                if reference is not None:
                    assert reference["key"] in secrets[(namespace, reference["name"])], env
                elif CREDENTIAL_NAME.search(env["name"]):
                    # Only a file path may stand in such a variable, never a credential.
                    assert env["value"].startswith("/"), f"{name}: {env['name']} is literal"


def test_no_plaintext_credentials_in_k8s_files() -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "k8s"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "k8s/base/mammo/minio.env.example" in files
    assert "k8s/base/mammo/minio-promoter.env.example" in files
    assert not [f for f in files if f.endswith(("minio.env", "minio-promoter.env"))], "real credential files are ignored"
    for real in ["k8s/base/mammo/minio.env", "k8s/base/kubeflow/minio.env"]:
        ignored = subprocess.run(["git", "check-ignore", "-q", real], cwd=ROOT)
        assert ignored.returncode == 0, f"{real} must be git-ignored"
    assigned = re.compile(
        r"(?<![a-z])(password|secret_?key|access_?key|root_user|token)\s*[:=]\s*[\"']?([^\s\"'#]+)",
        re.I,
    )
    for name in files:
        text = (ROOT / name).read_text()
        for document in yaml.safe_load_all(text) if name.endswith(".yaml") else []:
            assert not (document and document.get("kind") == "Secret"), f"{name}: literal Secret"
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for match in assigned.finditer(line):
                value = match.group(2)
                assert value == "CHANGE_ME" or value.startswith(("$", "/")), f"{name}: {line}"
            assert not re.search(r"AKIA[0-9A-Z]{16}|minioadmin|minio123", line), f"{name}: {line}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_their_pods_and_ports(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    templates = list(_pod_templates(docs))
    expected = {"minio": "minio", "pushgateway": "pushgateway"}
    for service in _objects(docs, "Service"):
        namespace = service["metadata"]["namespace"]
        selected = [
            (name, template) for name, ns, template in templates
            if ns == namespace and _selects({"matchLabels": service["spec"]["selector"]},
                                            template["metadata"]["labels"])
        ]
        assert [name for name, _ in selected] == [expected[service["metadata"]["name"]]]
        ports = _container_ports(selected[0][1])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_the_intended_pods(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    templates = list(_pod_templates(docs))
    policies = {p["metadata"]["name"]: p for p in _objects(docs, "NetworkPolicy") if p["metadata"]["namespace"] == "mammo"}
    assert set(policies) == {"default-deny-ingress", "minio-clients", "pushgateway-clients"}
    # Elsewhere only the egress policies of the pipeline pods (test_pipeline_pods_egress_...).
    assert {p["metadata"]["name"] for p in _objects(docs, "NetworkPolicy") if p["metadata"]["namespace"] != "mammo"} \
        == set(EGRESS_POLICIES)
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}

    def admitted(policy: dict[str, Any]) -> tuple[set[str], bool, set[str], set[int]]:
        """Our workloads admitted, whether pipeline pods are, other namespaces, ports."""
        ours: set[str] = set()
        pipeline = False
        elsewhere: set[str] = set()
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                namespaces = (
                    _selected_namespaces(peer["namespaceSelector"], PIPELINE_NAMESPACES | {"monitoring"})
                    if "namespaceSelector" in peer else {policy["metadata"]["namespace"]}
                )
                if peer["podSelector"].get("matchLabels") == dict([PIPELINE_LABEL]):
                    assert namespaces == PIPELINE_NAMESPACES
                    pipeline = True
                    continue
                elsewhere |= namespaces - {"mammo"}
                ours |= {
                    name for name, ns, template in templates
                    if ns in namespaces and _selects(peer["podSelector"], template["metadata"]["labels"])
                }
        ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        return ours, pipeline, elsewhere, ports

    for name, target, ours, others in [
        ("minio-clients", "minio", {"minio-setup"}, set()),
        ("pushgateway-clients", "pushgateway", set(), {"monitoring"}),
    ]:
        policy = policies[name]
        selected = [n for n, ns, t in templates
                    if ns == "mammo" and _selects(policy["spec"]["podSelector"], t["metadata"]["labels"])]
        assert selected == [target]
        got_ours, pipeline, elsewhere, ports = admitted(policy)
        assert (got_ours, pipeline, elsewhere) == (ours, True, others), name
        target_template = next(t for n, _, t in templates if n == target)
        assert ports <= set(_container_ports(target_template).values()), name
    # The stack's own pods are not pipeline pods: no template carries the pipeline label.
    for name, _, template in templates:
        assert template["metadata"]["labels"].get(PIPELINE_LABEL[0]) != PIPELINE_LABEL[1], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_runtime_config_points_at_the_services(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    config = _one(docs, "ConfigMap", "mammo-runtime", "kubeflow")["data"]
    assert set(config) == {"MINIO_ENDPOINT", "MINIO_SECURE", "MINIO_REGION", "MAMMO_PUSHGATEWAY_URL"}

    def service_address(name: str) -> set[str]:
        service = _one(docs, "Service", name, "mammo")
        return {f"{name}.mammo.svc.cluster.local:{p['port']}" for p in service["spec"]["ports"]}

    assert config["MINIO_ENDPOINT"] in service_address("minio")
    assert config["MAMMO_PUSHGATEWAY_URL"].removeprefix("http://") in service_address("pushgateway")
    scrape = yaml.safe_load((ROOT / "k8s/monitoring/prometheus-scrape.yaml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["honor_labels"] is True
    assert job["static_configs"][0]["targets"] == [config["MAMMO_PUSHGATEWAY_URL"].removeprefix("http://")]
    account = _one(docs, "ServiceAccount", "mammo-pipeline", "kubeflow")
    binding = _one(docs, "RoleBinding", "mammo-pipeline", "kubeflow")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kubeflow"}
    ]
    role = _one(docs, "Role", binding["roleRef"]["name"], "kubeflow")
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])
    assert all(
        rule.get("resourceNames") for rule in role["rules"] if rule["resources"] == ["secrets"]
    )
    # Pods: the KFP launcher's one get of its own pod; Argo's executor reports through
    # workflowtaskresults and patches no pod; nobody reads logs.
    pods = {verb for rule in role["rules"] if "pods" in rule["resources"] for verb in rule["verbs"]}
    assert pods == {"get"}
    assert not any("pods/log" in rule["resources"] for rule in role["rules"])


def test_pipeline_label_and_names_are_documented() -> None:
    docs = (ROOT / "docs/kubernetes.md").read_text()
    for needle in [
        f"{PIPELINE_LABEL[0]}: {PIPELINE_LABEL[1]}", "mammo-minio", "mammo-runtime",
        "mammo-pipeline", "minio.mammo.svc.cluster.local:9000",
    ]:
        assert needle in docs, needle


def test_dashboard_and_documented_queries_use_pushed_metrics() -> None:
    """The Grafana dashboard and the docs' PromQL name only metrics the telemetry pushes; the
    dashboard's mammo panels follow its component and run id variables, its GPU panels (DCGM
    exporter) the pipeline namespace."""
    dashboard = json.loads((ROOT / "k8s/monitoring/grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    mammo = [expr for expr in expressions if "mammo_" in expr]
    gpu = [expr for expr in expressions if "DCGM_FI_DEV_" in expr]
    assert mammo and len(mammo) + len(gpu) == len(expressions)
    assert all('job="mammo", component=~"$component", run_id=~"$run_id"' in expr for expr in mammo)
    assert len(gpu) >= 3 and all('namespace=~"$namespace"' in expr for expr in gpu)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "component", "run_id", "namespace"}
    assert variables["run_id"]["query"]["query"].startswith("label_values(") and variables["run_id"]["includeAll"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    from mammo.telemetry import metric_descriptions

    telemetry = metric_descriptions()
    docs = (ROOT / "docs/kubernetes.md").read_text()
    queries = docs.split("```promql", 1)[1].split("```", 1)[0]
    for name in set(re.findall(r"\bmammo_\w+", " ".join(expressions) + queries)):
        assert name in telemetry, f"{name} is not a metric of mammo.telemetry"


def test_prometheusrule_alerts_on_pushed_metrics(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-prometheusrule"]
    rule = _one(docs, "PrometheusRule", "mammo", "mammo")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert {"MammoStepFailed", "MammoNoRecentEvaluation", "MammoTrainerStalled", "MammoPushgatewayDown"} <= set(alerts)
    from mammo.telemetry import metric_descriptions

    telemetry = metric_descriptions()
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in {"warning", "critical"} and alert["annotations"]["summary"], name
        for metric in re.findall(r"\bmammo_\w+", alert["expr"]):
            assert metric in telemetry, f"{name}: {metric} is not a metric of mammo.telemetry"
    assert alerts["MammoStepFailed"]["expr"] == 'mammo_step_success{job="mammo"} == 0'
    for overlay in OVERLAYS:  # optional: no overlay needs the operator's CRD without it
        assert not _objects(rendered[overlay], "PrometheusRule")


def test_private_registry_gives_both_service_accounts_the_pull_secret(
    rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered["gpu-private-registry"]
    for name, namespace in (("mammo-pipeline", "kubeflow"), ("mammo-retrain", "mammo")):
        account = _one(docs, "ServiceAccount", name, namespace)
        assert account["imagePullSecrets"] == [{"name": "mammo-registry"}]
    for overlay in OVERLAYS:
        assert all("imagePullSecrets" not in sa for sa in _objects(rendered[overlay], "ServiceAccount"))
    # No Secret of that name is shipped: the registry credentials never enter git.
    assert not [doc for doc in docs if doc["kind"] == "Secret" and doc["metadata"]["name"] == "mammo-registry"]


def test_the_shipped_gpu_trainer_overlay_is_the_one_the_docs_show() -> None:
    """docs/kubernetes.md quotes k8s/overlays/gpu-trainer/kustomization.yaml: the same YAML."""
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    quoted = textwrap.dedent(text.split("# k8s/overlays/gpu-trainer/kustomization.yaml\n", 1)[1].split("```", 1)[0])
    shipped = yaml.safe_load((ROOT / "k8s" / "overlays" / "gpu-trainer" / "kustomization.yaml").read_text())
    assert yaml.safe_load(quoted) == shipped
    assert shipped["components"] == [f"../../components/{SHIPPED_WITH_COMPONENTS['gpu-trainer']}"]


def _egress_destinations(policy: dict[str, Any]) -> set[tuple[str, tuple[tuple[str, str], ...], str, int]]:
    """(namespace or CIDR, pod labels, protocol, port) of every egress rule's peer and port."""
    found = set()
    for rule in policy["spec"].get("egress", []):
        assert rule.get("to") and rule.get("ports"), f"{policy['metadata']['name']}: a rule without to/ports allows all"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert set(peer) == {"ipBlock"} and not peer["ipBlock"].get("except")
                where, labels = peer["ipBlock"]["cidr"], ()
            else:
                assert set(peer) == {"namespaceSelector", "podSelector"}, peer
                (namespace,) = peer["namespaceSelector"]["matchLabels"].values()
                assert list(peer["namespaceSelector"]["matchLabels"]) == ["kubernetes.io/metadata.name"]
                assert set(peer["podSelector"]) == {"matchLabels"} and peer["podSelector"]["matchLabels"]
                where, labels = namespace, tuple(sorted(peer["podSelector"]["matchLabels"].items()))
            for port in rule["ports"]:
                found.add((where, labels, port["protocol"], port["port"]))
    return found


@pytest.mark.parametrize("overlay", [*OVERLAYS, *SHIPPED_WITH_COMPONENTS])
def test_pipeline_pods_egress_is_default_deny_with_an_allow_list(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    policies = {name: _one(docs, "NetworkPolicy", name, "kubeflow") for name in EGRESS_POLICIES}
    for policy in policies.values():
        assert policy["spec"]["podSelector"] == {"matchLabels": dict([PIPELINE_LABEL])}
        assert policy["spec"]["policyTypes"] == ["Egress"]  # ingress is left as it is
    assert "egress" not in policies["mammo-pipeline-default-deny-egress"]["spec"]
    allowed = set().union(*map(_egress_destinations, policies.values()))
    assert allowed == EGRESS_ALLOWED
    # The allowed peers are the pods the stack runs, on ports they listen on.
    templates = {name: t for name, ns, t in _pod_templates(docs) if ns == "mammo"}
    for target in ("minio", "pushgateway"):
        [(labels, port)] = [(dict(l), p) for ns, l, _, p in allowed if ns == "mammo" and dict(l).get("app.kubernetes.io/name") == target]
        assert _selects({"matchLabels": labels}, templates[target]["metadata"]["labels"])
        assert port in _container_ports(templates[target]).values()
    config = _one(docs, "ConfigMap", "mammo-runtime", "kubeflow")["data"]
    assert config["MINIO_ENDPOINT"].endswith(":9000") and config["MAMMO_PUSHGATEWAY_URL"].endswith(":9091")
    # Only the trainer component adds traffic between pipeline pods (TrainJob nodes).
    nodes = [p for p in _objects(docs, "NetworkPolicy") if p["metadata"]["name"] == "mammo-trainjob-nodes"]
    if overlay in SHIPPED_WITH_COMPONENTS:
        [policy] = nodes
        assert policy["metadata"]["namespace"] == "kubeflow"
        assert policy["spec"]["podSelector"] == {"matchLabels": dict([PIPELINE_LABEL])}
        assert policy["spec"]["egress"] == [{"to": [{"podSelector": {"matchLabels": dict([PIPELINE_LABEL])}}]}]
    else:
        assert nodes == []


def test_cluster_apply_narrows_the_api_server_egress() -> None:
    """The API rule ships open (any address, API ports only): cluster-apply.sh replaces its peers
    by the cluster's API addresses after each apply (needs a cluster; checked on its text)."""
    text = (ROOT / "scripts/cluster-apply.sh").read_text()
    assert "patch networkpolicy mammo-pipeline-egress-kube-apiserver --type merge" in text
    assert "get endpoints kubernetes" in text and "get service kubernetes" in text
    assert text.index("patch networkpolicy") > text.index('kc apply -k "$overlay_dir"')


def _stub_kfp_argo_configmap() -> dict[str, Any]:
    """KFP 2.17's workflow-controller-configmap (manifests/kustomize/third-party/argo), trimmed."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "workflow-controller-configmap", "namespace": "kubeflow"},
        "data": {
            "artifactRepository": "archiveLogs: true\ns3:\n  endpoint: seaweedfs.kubeflow.svc:9000\n",
            "executor": "imagePullPolicy: IfNotPresent\n",
            "workflowDefaults": "spec:\n  ttlStrategy:\n    secondsAfterCompletion: 3600\n",
        },
    }


def _restricted_violations(security: dict[str, Any]) -> list[str]:
    """What the restricted Pod Security Standard (latest) refuses in a container's effective
    security context."""
    problems = []
    if security.get("privileged"):
        problems.append("privileged")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    capabilities = security.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        problems.append("capabilities must drop ALL")
    if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append("capabilities added")
    if security.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot must be true")
    if security.get("runAsUser") == 0:
        problems.append("runAsUser 0")
    if security.get("seccompProfile", {}).get("type") not in {"RuntimeDefault", "Localhost"}:
        problems.append("seccompProfile RuntimeDefault or Localhost")
    return problems


def test_argo_defaults_make_every_step_container_restricted(tmp_path: Path) -> None:
    """k8s/kfp/workflow-controller-defaults on KFP's ConfigMap, rendered as kfp-install.sh
    renders it (a copy of the component beside KFP's manifests): the other keys stay, and
    the main, init and wait containers of a step meet the restricted profile."""
    shutil.copytree(ROOT / "k8s/kfp/workflow-controller-defaults", tmp_path / "workflow-controller-defaults")
    (tmp_path / "kfp.yaml").write_text(yaml.safe_dump(_stub_kfp_argo_configmap()))
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [kfp.yaml]\n"
        "components: [workflow-controller-defaults]\n"
    )
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [configmap] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    data = configmap["data"]
    stub = _stub_kfp_argo_configmap()["data"]
    assert set(data) == {*stub, "mainContainer"}
    assert data["artifactRepository"] == stub["artifactRepository"] and data["workflowDefaults"] == stub["workflowDefaults"]
    main, executor = yaml.safe_load(data["mainContainer"]), yaml.safe_load(data["executor"])
    assert set(main) == {"securityContext"} and "runAsUser" not in main["securityContext"]
    assert executor["imagePullPolicy"] == "IfNotPresent"  # KFP's own setting kept
    assert executor["securityContext"]["runAsUser"] == 65532  # the non-root argoexec image's user
    assert _restricted_violations(executor["securityContext"]) == []  # Argo's init and wait
    assert _restricted_violations(main["securityContext"]) == []
    # A mammo step: Argo merges the defaults under what the step states (kfp-kubernetes
    # set_security_context: the images' user 10001).
    step = {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True}
    assert _restricted_violations({**main["securityContext"], **step}) == []
    # Without the defaults, the step's own fields are not enough.
    assert _restricted_violations(step)


def test_kfp_install_applies_the_argo_defaults() -> None:
    text = (ROOT / "scripts/kfp-install.sh").read_text()
    assert 'cp -R "$ROOT/k8s/kfp/workflow-controller-defaults" "$build_dir/"' in text
    assert '"components: [workflow-controller-defaults]"' in text
    assert "env/platform-agnostic?ref=$KFP_VERSION" in text and 'kc apply -k "$build_dir"' in text


def test_minio_setup_keeps_secrets_off_the_command_line(tmp_path: Path) -> None:
    """minio-setup.sh against a fake mc that records its arguments and stdin: the root password
    and the pipeline user's secret key reach mc on stdin, never as arguments (process lists)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mc.log"
    fake = bin_dir / "mc"
    fake.write_text(
        "#!/bin/sh\n"
        f'printf "ARGS %s\\n" "$*" >>"{log}"\n'
        'case "$*" in *"alias set"*|*"user add"*) '
        f'IFS= read -r line; printf "STDIN %s\\n" "$line" >>"{log}" ;; esac\n'
        'case "$*" in *"alias set"*) mkdir -p "$2" ;; esac\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "MC_CONFIG_DIR": str(tmp_path / "mc"),
        "MINIO_URL": "http://minio:9000", "MAMMO_BUCKET": "mammo",
        "MINIO_ROOT_USER": "admin-1234", "MINIO_ROOT_PASSWORD": "root-password-0f9e8d",
        "MINIO_ACCESS_KEY": "mammo-5678", "MINIO_SECRET_KEY": "pipeline-secret-7a6b5c",
        "MINIO_PROMOTER_ACCESS_KEY": "promoter-9abc", "MINIO_PROMOTER_SECRET_KEY": "promoter-secret-3d2e1f",
    }
    result = subprocess.run(["sh", str(ROOT / "k8s/base/mammo/minio-setup.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    args = [line for line in lines if line.startswith("ARGS ")]
    stdin = [line.removeprefix("STDIN ") for line in lines if line.startswith("STDIN ")]
    secrets = [env[k] for k in ("MINIO_ROOT_PASSWORD", "MINIO_SECRET_KEY", "MINIO_PROMOTER_SECRET_KEY")]
    assert stdin == secrets
    assert not [line for line in args if any(secret in line for secret in secrets)]
    assert any("alias set store http://minio:9000 admin-1234" in line for line in args)
    assert any("admin user add store mammo-5678" in line for line in args)
    assert any("admin policy attach store mammo-pipeline --user mammo-5678" in line for line in args)
    assert any("admin user add store promoter-9abc" in line for line in args)
    assert any("admin policy attach store mammo-promoter --user promoter-9abc" in line for line in args)


def _writes(policy: dict[str, Any]) -> dict[str, set[str]]:
    """Effect -> the resources a policy's statements allow or deny PutObject on."""
    found: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        if "s3:PutObject" in statement["Action"]:
            found.setdefault(statement["Effect"], set()).update(statement["Resource"])
    return found


def test_only_the_promoter_user_may_write_under_models(tmp_path: Path) -> None:
    """The two policies minio-setup.sh creates (valid JSON, as mc would read them): the pipeline
    user writes the bucket but is denied models/; the promoter user writes models/ only; both
    read and list the bucket and nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text('#!/bin/sh\ncase "$*" in *"alias set"*|*"user add"*) IFS= read -r line ;; esac\nexit 0\n')
    (bin_dir / "mc").chmod(0o755)
    config = tmp_path / "mc"
    config.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "MC_CONFIG_DIR": str(config),
        "MINIO_URL": "http://minio:9000", "MAMMO_BUCKET": "mammo", "MINIO_ROOT_USER": "a", "MINIO_ROOT_PASSWORD": "b",
        "MINIO_ACCESS_KEY": "c", "MINIO_SECRET_KEY": "d", "MINIO_PROMOTER_ACCESS_KEY": "e", "MINIO_PROMOTER_SECRET_KEY": "f",
    }
    result = subprocess.run(["sh", str(ROOT / "k8s/base/mammo/minio-setup.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pipeline = json.loads((config / "mammo-pipeline-policy.json").read_text())
    promoter = json.loads((config / "mammo-promoter-policy.json").read_text())
    assert _writes(pipeline) == {"Allow": {"arn:aws:s3:::mammo/*"}, "Deny": {"arn:aws:s3:::mammo/models/*"}}
    assert _writes(promoter) == {"Allow": {"arn:aws:s3:::mammo/models/*"}}
    for policy in (pipeline, promoter):
        resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
        assert resources <= {"arn:aws:s3:::mammo", "arn:aws:s3:::mammo/*", "arn:aws:s3:::mammo/models/*"}
