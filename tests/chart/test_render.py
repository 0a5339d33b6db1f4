"""helm/flotilla linted and rendered with Helm's Go SDK for a matrix of values; every rendered
object validated strictly against the Kubernetes 1.30 schemas; names, images, security,
probes, disruption budgets and pool settings checked one by one."""

from __future__ import annotations

import re

import pytest

from chartlib import (NAMESPACE, args, by_component, container, find, flag, lint, notes, objects,
                      one, refusal, render, validate)

LONG_RELEASE = "office-cluster-of-the-benchmarks-team-in-osaka-01"  # 50 chars, no "flotilla"

GPU_POOL = {
    "name": "gpu", "replicas": 3, "gpus": 1, "keepModels": 1, "threads": 4,
    "resources": {"requests": {"cpu": "4", "memory": "24Gi"}, "limits": {"memory": "32Gi"}},
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gpu-kind", "operator": "In", "values": ["rtx4090"]}]}]}}},
    "runtimeClassName": "nvidia", "priorityClassName": "batch-low",
    "image": {"repository": "registry.example/flotilla", "tag": "0.1.0-cuda-sm89"},
    "extraArgs": ["--slots=1"],
    "env": [{"name": "RUST_LOG", "value": "debug"}],
    "podAnnotations": {"example.com/team": "bench"},
}

MATRIX = {
    "defaults": ({}, "demo"),
    "cpu-and-gpu-pools": ({"workers": {"pools": [
        {"name": "cpu", "replicas": 2, "device": "cpu", "threads": 3}, GPU_POOL,
        {"name": "gpu-small", "replicas": 1, "gpus": 1}]}}, "demo"),
    "external-etcd-existing-secret": ({
        "etcd": {"enabled": False,
                 "endpoints": ["http://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"]},
        "token": {"existingSecret": "flotilla-shared-token", "existingSecretKey": "shared"}},
        "demo"),
    "tls": ({"coordinator": {"tls": {"secretName": "flotilla-tls"}}}, "demo"),
    "mutual-tls": ({"coordinator": {"tls": {"secretName": "flotilla-tls",
                                            "requireClientCertificates": True}}}, "demo"),
    "long-release-name": ({"workers": {"pools": [
        {"name": "cpu", "replicas": 1}, {"name": "rtx4090-24gb-office-desktops", "replicas": 2,
                                         "gpus": 1}]}}, LONG_RELEASE),
    "metrics-and-service-monitor": ({"metrics": {"enabled": True, "serviceMonitor": {
        "enabled": True, "labels": {"release": "prometheus"}}}}, "demo"),
    "no-persistence-host-path-models": ({
        "coordinator": {"persistence": {"enabled": False}},
        "etcd": {"persistence": {"enabled": False}},
        "workers": {"modelCache": {"hostPath": "/srv/models", "readOnly": True}}}, "demo"),
    "fullname-override-claim": ({"fullnameOverride": "bench",
                                 "workers": {"modelCache": {"existingClaim": "models"}}}, "demo"),
}

NAME_LIMITS = {"StatefulSet": 52, "Deployment": 63, "Service": 63, "PodDisruptionBudget": 63,
               "Secret": 253, "ServiceMonitor": 63}
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def rendered_case(case: str) -> tuple[dict, list[dict]]:
    values, name = MATRIX[case]
    out = render(values, name=name)
    return out, objects(out)


def workloads(objs: list[dict]) -> list[dict]:
    return find(objs, "StatefulSet") + find(objs, "Deployment")


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_lint_is_clean(case):
    values, _ = MATRIX[case]
    report = lint(values)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_object_validates_strictly_against_kubernetes_1_30(case):
    _, objs = rendered_case(case)
    assert len(objs) >= 5, [o["kind"] for o in objs]
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":  # a CRD: no schema in kubernetes-validate
            continue
        validate(obj)


def test_strict_validation_refuses_a_misspelt_field():
    """The validator itself is strict: the checks above can fail."""
    _, objs = rendered_case("defaults")
    sts = find(objs, "StatefulSet")[0]
    container(sts)["volumeMount"] = container(sts).pop("volumeMounts")
    with pytest.raises(Exception, match="volumeMount"):
        validate(sts)


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_names_and_labels_stay_within_kubernetes_limits(case):
    _, objs = rendered_case(case)
    seen = set()
    for obj in objs:
        name = obj["metadata"]["name"]
        assert len(name) <= NAME_LIMITS[obj["kind"]], (obj["kind"], name, len(name))
        assert DNS_LABEL.match(name), name
        assert (obj["kind"], name) not in seen, f"two {obj['kind']}s named {name}"
        seen.add((obj["kind"], name))
        for key, value in obj["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63, (key, value)
    for w in workloads(objs):
        for port in container(w).get("ports", []):
            assert len(port["name"]) <= 15, port


def test_long_release_names_are_shortened_with_a_hash_and_stay_distinct():
    _, objs = rendered_case("long-release-name")
    names = {o["metadata"]["name"] for o in workloads(objs)}
    assert all(len(n) <= 63 for n in names)
    coord = by_component(objs, "StatefulSet", "coordinator")[0]["metadata"]["name"]
    etcd = by_component(objs, "StatefulSet", "etcd")[0]["metadata"]["name"]
    assert len(coord) <= 52 and len(etcd) <= 52
    assert coord.endswith("-coordinator") and etcd.endswith("-etcd")
    assert coord.startswith("office-cluster") and re.search(r"-[0-9a-f]{8}-coordinator$", coord)
    # Another long release that shares the first 30 characters gets other names.
    other = objects(render(MATRIX["long-release-name"][0], name=LONG_RELEASE[:-2] + "02"))
    other_coord = by_component(other, "StatefulSet", "coordinator")[0]["metadata"]["name"]
    assert other_coord != coord
    # The Service the workers reach is the one the coordinator advertises.
    svc = by_component(objs, "Service", "coordinator")[0]["metadata"]["name"]
    sts = by_component(objs, "StatefulSet", "coordinator")[0]
    assert flag(sts, "advertise") == f"http://{svc}.{NAMESPACE}.svc:7070"


def test_short_names_and_overrides():
    objs = objects(render({}, name="demo"))
    assert {o["metadata"]["name"] for o in find(objs, "StatefulSet")} == {
        "demo-flotilla-coordinator", "demo-flotilla-etcd"}
    objs = objects(render({}, name="flotilla"))
    assert one(objs, "Deployment")["metadata"]["name"] == "flotilla-worker-cpu"
    _, objs = rendered_case("fullname-override-claim")
    assert {o["metadata"]["name"] for o in workloads(objs)} == {
        "bench-coordinator", "bench-etcd", "bench-worker-cpu"}
    objs = objects(render({"nameOverride": "fleet"}, name="demo"))
    assert one(objs, "Deployment")["metadata"]["name"] == "demo-fleet-worker-cpu"
    assert "fullnameOverride" in refusal({}, name="1st-cluster")


def test_image_tag_defaults_to_app_version_and_cuda_pools_get_the_cuda_image():
    _, objs = rendered_case("cpu-and-gpu-pools")
    images = {w["metadata"]["name"]: container(w)["image"] for w in workloads(objs)}
    assert images["demo-flotilla-coordinator"] == "flotilla:0.1.0"
    assert images["demo-flotilla-worker-cpu"] == "flotilla:0.1.0"
    assert images["demo-flotilla-worker-gpu"] == "registry.example/flotilla:0.1.0-cuda-sm89"
    assert images["demo-flotilla-worker-gpu-small"] == "flotilla:0.1.0-cuda"
    assert images["demo-flotilla-etcd"] == "gcr.io/etcd-development/etcd:v3.5.21"
    objs = objects(render({"image": {"repository": "reg.example/f", "tag": "2.0.0"},
                           "workers": {"pools": [{"name": "g", "replicas": 1, "gpus": 2}]}}))
    images = sorted(container(w)["image"] for w in workloads(objs))
    assert images == ["gcr.io/etcd-development/etcd:v3.5.21", "reg.example/f:2.0.0",
                      "reg.example/f:2.0.0-cuda"]


def test_etcd_is_the_official_image_pinned_and_run_without_a_shell():
    _, objs = rendered_case("defaults")
    etcd = by_component(objs, "StatefulSet", "etcd")[0]
    c = container(etcd)
    repo, tag = c["image"].rsplit(":", 1)
    assert repo in ("gcr.io/etcd-development/etcd", "quay.io/coreos/etcd")
    assert re.fullmatch(r"v3\.\d+\.\d+", tag), tag
    assert c["command"] == ["/usr/local/bin/etcd"]
    assert not any(a in ("sh", "/bin/sh", "-c") for a in c["command"] + c["args"])
    assert "--data-dir=/var/lib/etcd/data" in c["args"]


def test_a_pool_with_only_name_replicas_and_gpus_gets_defaults():
    objs = objects(render({"workers": {"pools": [{"name": "gpu", "replicas": 1, "gpus": 1}]}}))
    w = one(objs, "Deployment")
    assert w["spec"]["replicas"] == 1
    assert flag(w, "device") == "cuda:0"
    assert flag(w, "slots") == "1"
    assert flag(w, "keep-models") == "2"
    assert flag(w, "threads") is None
    assert container(w)["resources"]["limits"]["nvidia.com/gpu"] == 1
    for a in args(w):
        assert not a.endswith("="), f"empty flag {a}"


def test_keep_models_zero_stays_zero():
    objs = objects(render({"workers": {"pools": [
        {"name": "a", "replicas": 1, "keepModels": 0},
        {"name": "b", "replicas": 1}], "poolDefaults": {"keepModels": 5}}}))
    pools = {w["metadata"]["labels"]["flotilla.dev/pool"]: w for w in find(objs, "Deployment")}
    assert flag(pools["a"], "keep-models") == "0"
    assert flag(pools["b"], "keep-models") == "5"


def test_pool_settings_reach_the_pod():
    _, objs = rendered_case("cpu-and-gpu-pools")
    gpu = one(objs, "Deployment", "demo-flotilla-worker-gpu")
    spec = gpu["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "runtimeClassName",
                "priorityClassName"):
        assert spec[key] == GPU_POOL[key], key
    assert gpu["spec"]["replicas"] == 3
    assert gpu["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "bench"
    c = container(gpu)
    assert flag(gpu, "device") == "cuda:0" and flag(gpu, "threads") == "4"
    assert flag(gpu, "keep-models") == "1"
    assert c["args"][-1] == "--slots=1"
    assert {"name": "RUST_LOG", "value": "debug"} in c["env"]
    assert c["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": 1}
    cpu = one(objs, "Deployment", "demo-flotilla-worker-cpu")
    assert flag(cpu, "device") == "cpu" and flag(cpu, "threads") == "3"
    assert "nvidia.com/gpu" not in str(container(cpu)["resources"])
    assert "runtimeClassName" not in cpu["spec"]["template"]["spec"]
    # --id comes from the pod's name, which the env var provides.
    assert flag(cpu, "id") == "$(POD_NAME)"
    env = {e["name"]: e for e in container(cpu)["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_every_pod_is_locked_down_and_writes_only_to_volumes():
    for case in MATRIX:
        _, objs = rendered_case(case)
        for w in workloads(objs):
            pod = w["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == 10001
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            sc = container(w)["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m for m in container(w)["volumeMounts"]}
            volumes = {v["name"] for v in pod.get("volumes", [])} | {
                t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
            for m in mounts.values():
                assert m["name"] in volumes, (w["metadata"]["name"], m)
            component = w["metadata"]["labels"]["app.kubernetes.io/component"]
            writable = {"coordinator": ["/var/lib/flotilla", "/tmp", "/home/flotilla"],
                        "worker": ["/scratch", "/tmp", "/home/flotilla"],
                        "etcd": ["/var/lib/etcd"]}[component]
            for path in writable:
                assert path in mounts and not mounts[path].get("readOnly"), (case, path)


def test_probes():
    _, objs = rendered_case("defaults")
    coord = container(by_component(objs, "StatefulSet", "coordinator")[0])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert coord[probe]["tcpSocket"] == {"port": "grpc"}, probe
    assert {"name": "grpc", "containerPort": 7070} in coord["ports"]
    etcd = container(by_component(objs, "StatefulSet", "etcd")[0])
    assert etcd["livenessProbe"]["httpGet"]["path"] == "/livez"
    worker = container(one(objs, "Deployment"))
    assert not any(p in worker for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert "--cache-budget-gb=15" in worker["args"], worker["args"]
    # With metrics on, a worker serves /healthz and /readyz, and its probes ask them.
    objs = objects(render({"metrics": {"enabled": True},
                           "workers": {"poolDefaults": {"cacheBudgetGB": 0}}}))
    worker = container(one(objs, "Deployment"))
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert not any(a.startswith("--cache-budget-gb") for a in worker["args"]), worker["args"]
    objs = objects(render({"coordinator": {"probes": {"type": "grpc"}}, "workers": {
        "poolDefaults": {"probes": {"liveness": {"exec": {"command": ["/usr/local/bin/flotilla",
                                                                      "--version"]}}}}}}))
    coord = container(find(objs, "StatefulSet")[0])
    assert coord["livenessProbe"]["grpc"] == {"port": 7070}
    assert container(one(objs, "Deployment"))["livenessProbe"]["exec"]["command"][1] == \
        "--version"
    msg = refusal({"coordinator": {"probes": {"type": "grpc"}, "tls": {"secretName": "t"}}})
    assert "TLS" in msg


def test_tls_and_mutual_tls_flags_mounts_and_notes():
    for case, mutual in (("tls", False), ("mutual-tls", True)):
        out, objs = rendered_case(case)
        coord = by_component(objs, "StatefulSet", "coordinator")[0]
        worker = one(objs, "Deployment")
        assert flag(coord, "tls-cert") == "/etc/flotilla/tls/tls.crt"
        assert flag(coord, "tls-key") == "/etc/flotilla/tls/tls.key"
        assert (flag(coord, "tls-client-ca") is not None) == mutual
        assert flag(coord, "advertise").startswith("https://demo-flotilla-coordinator.")
        assert flag(worker, "tls-ca") == "/etc/flotilla/tls/ca.crt"
        assert (flag(worker, "tls-cert") is not None) == mutual
        assert (flag(worker, "tls-key") is not None) == mutual
        for w in (coord, worker):
            vols = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
            assert vols["tls"]["secret"]["secretName"] == "flotilla-tls"
        text = notes(out)
        assert "https://localhost:7070" in text and "--tls-ca ca.crt" in text
        assert ("--tls-cert client.crt" in text) == mutual
        assert "demo-flotilla-coordinator.flotilla.svc" in text
        assert "127.0.0.1:7070" not in text
    out, objs = rendered_case("defaults")
    assert flag(one(objs, "Deployment"), "tls-ca") is None
    assert "https" not in notes(out) and "127.0.0.1:7070" in notes(out)


def test_external_etcd_with_an_existing_secret():
    out, objs = rendered_case("external-etcd-existing-secret")
    assert by_component(objs, "StatefulSet", "etcd") == [] and find(objs, "Secret") == []
    for w in workloads(objs):
        assert flag(w, "etcd") == "http://etcd-0.etcd:2379,http://etcd-1.etcd:2379"
        assert flag(w, "token-file") == "/etc/flotilla/token/shared"
        vols = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        assert vols["token"]["secret"]["secretName"] == "flotilla-shared-token"
    assert "flotilla-shared-token" in notes(out) and "{.data.shared}" in notes(out)
    assert "/etcd/endpoints" in refusal({"etcd": {"enabled": False}})


def test_metrics_are_off_by_default_and_complete_when_on():
    out, objs = rendered_case("defaults")
    assert "--http" not in str([args(w) for w in workloads(objs)])
    assert find(objs, "ServiceMonitor") == []
    _, objs = rendered_case("metrics-and-service-monitor")
    for w in by_component(objs, "StatefulSet", "coordinator") + find(objs, "Deployment"):
        assert flag(w, "http") == "0.0.0.0:9090"
        assert {"name": "http", "containerPort": 9090} in container(w)["ports"]
    sm = one(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    selected = [s for s in find(objs, "Service") if all(
        s["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected} == {
        "coordinator", "worker"}
    for s in selected:
        assert any(p["name"] == "http" for p in s["spec"]["ports"])
    objs = objects(render({"metrics": {"enabled": True}}))
    assert find(objs, "ServiceMonitor") == []


def test_selectors_match_their_pods():
    for case in MATRIX:
        _, objs = rendered_case(case)
        pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(objs)]
        for w in workloads(objs):
            sel = w["spec"]["selector"]["matchLabels"]
            assert sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()
            assert sum(1 for p in pods if sel.items() <= p.items()) == 1, sel
        for s in find(objs, "Service"):
            sel = s["spec"]["selector"]
            assert any(sel.items() <= p.items() for p in pods), s["metadata"]["name"]
        for pdb in find(objs, "PodDisruptionBudget"):
            sel = pdb["spec"]["selector"]["matchLabels"]
            assert sum(1 for p in pods if sel.items() <= p.items()) == 1, pdb["metadata"]["name"]


def test_disruption_budgets():
    _, objs = rendered_case("cpu-and-gpu-pools")
    pdbs = {p["metadata"]["name"]: p["spec"] for p in find(objs, "PodDisruptionBudget")}
    assert set(pdbs) == {"demo-flotilla-coordinator", "demo-flotilla-worker-cpu",
                         "demo-flotilla-worker-gpu", "demo-flotilla-worker-gpu-small"}
    assert pdbs["demo-flotilla-coordinator"]["maxUnavailable"] == 1
    objs = objects(render({"workers": {"pools": [
        {"name": "a", "replicas": 4, "podDisruptionBudget": {"enabled": True,
                                                             "minAvailable": "50%"}},
        {"name": "b", "replicas": 1, "podDisruptionBudget": {"enabled": False}},
        {"name": "c", "replicas": 1, "podDisruptionBudget": {"enabled": True,
                                                             "maxUnavailable": 0}}]},
        "coordinator": {"podDisruptionBudget": {"enabled": False}}}))
    pdbs = {p["metadata"]["name"]: p["spec"] for p in find(objs, "PodDisruptionBudget")}
    assert set(pdbs) == {"demo-flotilla-worker-a", "demo-flotilla-worker-c"}
    assert pdbs["demo-flotilla-worker-a"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in pdbs["demo-flotilla-worker-a"]
    assert pdbs["demo-flotilla-worker-c"]["maxUnavailable"] == 0


def test_model_cache_and_persistence_choices():
    _, objs = rendered_case("no-persistence-host-path-models")
    for w in workloads(objs):
        assert "volumeClaimTemplates" not in w["spec"]
    worker = one(objs, "Deployment")
    vols = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert vols["models"]["hostPath"] == {"path": "/srv/models", "type": "Directory"}
    mounts = {m["name"]: m for m in container(worker)["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    _, objs = rendered_case("fullname-override-claim")
    vols = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert "existingClaim or hostPath" in refusal(
        {"workers": {"modelCache": {"existingClaim": "m", "hostPath": "/m"}}})


def test_duplicate_pool_names_are_refused():
    assert "two pools" in refusal({"workers": {"pools": [{"name": "a", "replicas": 1},
                                                         {"name": "a", "replicas": 2}]}})
