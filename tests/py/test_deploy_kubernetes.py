"""deploy/kubernetes and deploy/helm/mcplb: the objects validate against the Kubernetes schemas
(kubernetes-validate ships them: no network), the chart renders with Helm's own engine
(helm-python-sdk binds Helm v4's Go SDK; `helm template` without a cluster) into the same
objects as the plain manifests, and what the pods would run is run here against the built
mcplb: the init container's script writes and checks the config from the ConfigMap and the
Secret, mcplb starts with the container's args on that file (addresses moved to loopback), and
the readiness and liveness probes' commands pass against it."""

from __future__ import annotations

import base64
import copy
import os
import re
import signal
import tomllib
from pathlib import Path

import helm_python as helm
import httpx
import kubernetes_validate
import pytest

from conftest import start_proxy_file
from deploy_support import (
    CHART_DIR,
    K8S_DIR,
    by_kind,
    localize,
    mock_backends,
    run_image_command,
    run_init_script,
    seconds,
    yaml_objects,
)

# The oldest Kubernetes the objects are for (preStop's sleep action is on by default since
# 1.30) and the newest whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
RELEASE = "mcplb"  # the chart's objects are then named as the plain manifests' are


def plain_objects() -> list[dict]:
    objects = []
    for f in sorted(K8S_DIR.glob("*.yaml")):
        if f.name != "kustomization.yaml":
            objects += yaml_objects(f.read_text())
    return objects


def render_chart(values: dict | None = None) -> list[dict]:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace="mcp", is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            objects += yaml_objects(text)
    return objects


def validate(objects: list[dict], where: str) -> None:
    problems = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{where}: {name} (Kubernetes {version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{where}: {name}: {e.message}")
    assert not problems, "\n".join(problems)


CHART_VARIANTS = {
    "defaults": {},
    "fixed replicas, own secret, other ports": {
        "autoscaling": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "replicaCount": 2,
        "secret": {"existingSecret": "mcplb-keys"},
        "ports": {"mcp": 18080, "admin": 19901},
        "service": {"type": "LoadBalancer", "port": 443, "annotations": {"example.com/lb": "external"}},
        "shutdownTimeoutSeconds": 60,
        "preStopSeconds": 10,
        "image": {"repository": "registry.example.com/mcplb", "tag": "0.1.0-rc1"},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
    },
    "values for the secret": {
        "secret": {"sessionKeys": ["a" * 64, "b" * 64], "adminToken": "T0ken_from-values"},
    },
}


def test_plain_manifests_validate_and_kustomization_lists_them():
    objects = plain_objects()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    )
    validate(objects, "deploy/kubernetes")
    kustomization = yaml_objects((K8S_DIR / "kustomization.yaml").read_text())[0]
    files = sorted(f.name for f in K8S_DIR.glob("*.yaml") if f.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


def test_validation_catches_a_wrong_field():
    """The schemas are strict: a misspelt field fails (so the passes above mean something)."""
    deployment = copy.deepcopy(by_kind(plain_objects())["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["argz"] = ["run"]
    with pytest.raises(AssertionError, match="argz"):
        validate([deployment], "mutated")


@pytest.mark.parametrize("variant", list(CHART_VARIANTS))
def test_chart_renders_valid_objects(variant):
    validate(render_chart(CHART_VARIANTS[variant]), f"chart ({variant})")


def test_chart_lints_clean():
    result = helm.lint(str(CHART_DIR), strict=True)
    # Severities: 1 info (e.g. "icon is recommended"), 2 warning, 3 error.
    serious = [m for m in result["messages"] if m["severity"] >= 2]
    assert not result["errors"] and not serious, result


def test_chart_defaults_make_the_plain_manifests():
    """With release name "mcplb" and default values the chart makes the objects of
    deploy/kubernetes: same pod spec, Service, PDB and HPA specs, same config and Secret keys.
    Only the chart's own labels and checksum annotations, and the secret values, differ."""
    plain, chart = by_kind(plain_objects()), by_kind(render_chart())
    assert plain.keys() == chart.keys()
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert plain[kind]["metadata"]["name"] == chart[kind]["metadata"]["name"]
    pd, cd = plain["Deployment"]["spec"], chart["Deployment"]["spec"]
    assert pd["template"]["spec"] == cd["template"]["spec"]
    assert {k: v for k, v in pd.items() if k != "template"} == {k: v for k, v in cd.items() if k != "template"}
    assert pd["template"]["metadata"]["labels"] == cd["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert plain[kind]["spec"] == chart[kind]["spec"], kind
    assert tomllib.loads(plain["ConfigMap"]["data"]["mcplb.toml"]) == tomllib.loads(
        chart["ConfigMap"]["data"]["mcplb.toml"]
    )
    assert plain["Secret"]["metadata"]["name"] == chart["Secret"]["metadata"]["name"]
    assert set(plain["Secret"]["stringData"]) == set(chart["Secret"]["data"])


def test_chart_values_take_effect():
    custom = by_kind(render_chart(CHART_VARIANTS["fixed replicas, own secret, other ports"]))
    assert "HorizontalPodAutoscaler" not in custom and "PodDisruptionBudget" not in custom
    assert "Secret" not in custom  # the user's own Secret
    d = custom["Deployment"]["spec"]
    pod = d["template"]["spec"]
    assert d["replicas"] == 2
    assert not any(a.startswith("checksum/admin") for a in d["template"]["metadata"]["annotations"])
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == ["mcplb-keys"]
    assert pod["terminationGracePeriodSeconds"] == 60 + 10 + 10
    assert pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
    assert pod["containers"][0]["image"] == "registry.example.com/mcplb:0.1.0-rc1"
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]} == {"mcp": 18080, "admin": 19901}
    cfg = tomllib.loads(custom["ConfigMap"]["data"]["mcplb.toml"])
    assert cfg["proxy"]["listen"] == "0.0.0.0:18080" and cfg["admin"]["listen"] == "0.0.0.0:19901"
    assert cfg["proxy"]["shutdown_timeout"] == "60s"
    svc = custom["Service"]
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["ports"][0]["port"] == 443
    assert svc["metadata"]["annotations"] == {"example.com/lb": "external"}

    # Generated secret values: one 32-byte key (base64) and a 32-character token, new per install.
    one, two = by_kind(render_chart())["Secret"]["data"], by_kind(render_chart())["Secret"]["data"]
    (key,) = base64.b64decode(one["session-keys"]).decode().splitlines()
    assert len(base64.b64decode(key)) == 32
    assert re.fullmatch(r"[A-Za-z0-9]{32}", base64.b64decode(one["admin-token"]).decode())
    assert one["session-keys"] != two["session-keys"]
    # Keys given in values: one per line, in order (the first seals). A session key is not in
    # the pod template (a rotation rolls no pod); an admin token given in values is.
    given_objects = by_kind(render_chart(CHART_VARIANTS["values for the secret"]))
    given = given_objects["Secret"]["data"]
    assert base64.b64decode(given["session-keys"]).decode() == "a" * 64 + "\n" + "b" * 64 + "\n"
    assert base64.b64decode(given["admin-token"]).decode() == "T0ken_from-values"
    annotations = given_objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/admin-token" in annotations
    assert not any("secret" in a or "session" in a for a in annotations)


def test_chart_refuses_a_config_without_the_placeholders():
    config = by_kind(render_chart())["ConfigMap"]["data"]["mcplb.toml"]
    inline = config.replace('session_keys_file = "/etc/mcplb/secret/session-keys"', 'session_key = "' + "b" * 64 + '"')
    assert inline != config
    with pytest.raises(helm.HelmError, match="must keep session_keys_file"):
        render_chart({"config": inline})
    with pytest.raises(helm.HelmError, match="must keep"):
        render_chart({"config": config.replace('"@ADMIN_TOKEN@"', '"plain"')})


def secret_values(objects: dict[str, dict]) -> dict[str, str]:
    """The Secret's values as the pod's volume shows them (files named by key)."""
    s = objects.get("Secret")
    if s is None:  # existingSecret: the test plays the user's own Secret
        return {"session-keys": base64.b64encode(os.urandom(32)).decode() + "\n", "admin-token": "own-token.1"}
    if "stringData" in s:
        return dict(s["stringData"])
    return {k: base64.b64decode(v).decode() for k, v in s["data"].items()}


def mounts(container: dict) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container["volumeMounts"]}


def run_pod_here(objects: dict[str, dict], tmp: Path) -> None:
    """Does what a pod of `objects` does, here: the init container's script with the ConfigMap
    and the Secret as files, mcplb with the container's args, both probes' commands; checks
    that every path, port and key they name is the one the other objects provide."""
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e["value"] for e in init["env"]}

    # The init container reads the ConfigMap's key and the Secret's keys where they are mounted.
    init_mounts = mounts(init)
    cm_volume = next(n for n, v in volumes.items() if "configMap" in v)
    secret_volume = next(n for n, v in volumes.items() if "secret" in v)
    out_volume = next(n for n, v in volumes.items() if "emptyDir" in v)
    assert volumes[cm_volume]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    if "Secret" in objects:
        assert volumes[secret_volume]["secret"]["secretName"] == objects["Secret"]["metadata"]["name"]
    (cm_key,) = objects["ConfigMap"]["data"]
    assert env["TEMPLATE"] == f"{init_mounts[cm_volume]}/{cm_key}"
    assert env["SECRETS_DIR"] == init_mounts[secret_volume]
    assert os.path.dirname(env["OUT"]) == init_mounts[out_volume]
    # mcplb reads the file the init container wrote; the probes name that same file.
    assert mounts(main)[out_volume] == init_mounts[out_volume]
    # The session keys file is read where the Secret is mounted whole (no subPath: the kubelet's
    # updates must reach the running pod), at the same path in both containers.
    keys_file = tomllib.loads(objects["ConfigMap"]["data"][cm_key])["proxy"]["session_keys_file"]
    assert os.path.dirname(keys_file) == mounts(main)[secret_volume] == init_mounts[secret_volume]
    assert os.path.basename(keys_file) in secret_values(objects)
    assert not any("subPath" in m for m in main["volumeMounts"])
    assert main["args"] == ["run", "--config", env["OUT"]]
    probes = {"readiness": main["readinessProbe"], "liveness": main["livenessProbe"]}
    for name, probe in probes.items():
        assert probe["exec"]["command"][:4] == ["mcplb", "probe", "--config", env["OUT"]], name
    assert probes["readiness"]["exec"]["command"][4] == "/readyz"
    assert probes["liveness"]["exec"]["command"][4] == "/healthz"

    # Ports: the config's listeners are the container's named ports; the Service targets one.
    config = objects["ConfigMap"]["data"][cm_key]
    cfg = tomllib.loads(config)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert cfg["proxy"]["listen"] == f"0.0.0.0:{ports['mcp']}"
    assert cfg["admin"]["listen"] == f"0.0.0.0:{ports['admin']}"
    assert [p["targetPort"] for p in objects["Service"]["spec"]["ports"]] == ["mcp"]
    # The grace period covers the preStop pause and mcplb's drain, with room to stop children.
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + seconds(cfg["proxy"]["shutdown_timeout"]) + 5
    # Hardening.
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in (init, main):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]

    with mock_backends(len([b for g in cfg["servers"] for b in g["backends"]])) as urls:
        local, admin_port = localize(config, urls)
        template, secrets, out = tmp / "template.toml", tmp / "secret", tmp / "run" / "mcplb.toml"
        # The Secret's mount point is this test's directory; the watch is made quicker than the
        # manifests' (the behaviour is the same, the test shorter).
        local = local.replace(f'"{keys_file}"', f'"{secrets / os.path.basename(keys_file)}"')
        assert cfg["proxy"]["watch_interval"] == "10s"
        local = local.replace('watch_interval = "10s"', 'watch_interval = "200ms"')
        template.write_text(local)
        secrets.mkdir()
        out.parent.mkdir()
        values = secret_values(objects)
        for k, v in values.items():
            (secrets / k).write_text(v + "\n")  # as `kubectl create secret --from-file` may
        script = init["command"][2]
        assert init["command"][:2] == ["/bin/sh", "-c"]
        done = run_init_script(script, {"TEMPLATE": str(template), "SECRETS_DIR": str(secrets), "OUT": str(out)}, tmp)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "valid" in done.stdout
        written = out.read_text()
        assert "@ADMIN_TOKEN@" not in written and values["admin-token"] in written
        assert tomllib.loads(written)["proxy"]["session_keys_file"] == str(secrets / "session-keys")
        assert oct(out.stat().st_mode & 0o777) == oct(0o600)

        proxy = start_proxy_file(out)  # `mcplb run --config OUT`: the container's args
        try:
            mapping = {env["OUT"]: str(out)}
            for name, probe in probes.items():
                r = run_image_command(probe["exec"]["command"], mapping, tmp)
                assert r.returncode == 0, f"{name} probe: {r.stdout}{r.stderr}"
            ready = run_image_command(probes["readiness"]["exec"]["command"], mapping, tmp)
            assert '"ready":true' in ready.stdout
            # The admin port wants the token from the Secret.
            metrics = f"http://127.0.0.1:{admin_port}/metrics"
            assert httpx.get(metrics).status_code == 401
            r = httpx.get(metrics, headers={"authorization": f"Bearer {values['admin-token']}"})
            assert r.status_code == 200 and "mcplb_requests_total" in r.text
            # Clients get through to a backend on the group's path.
            path = cfg["servers"][0]["path"]
            init_body = {
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            }
            hdrs = {"accept": "application/json, text/event-stream"}
            r = httpx.post(f"http://{proxy.addr}{path}", json=init_body, headers=hdrs)
            assert r.status_code == 200 and r.headers.get("mcp-session-id"), r.text
            rotate_keys_as_the_secret_says(proxy, f"http://{proxy.addr}{path}", secrets, admin_port, values["admin-token"], r.headers["mcp-session-id"])
            # SIGTERM (what the kubelet sends after preStop): mcplb exits 0 well within the grace.
            proxy.proc.send_signal(signal.SIGTERM)
            assert proxy.proc.wait(timeout=pod["terminationGracePeriodSeconds"]) == 0
        finally:
            proxy.stop()

        # A secret value that cannot go into a TOML string stops the pod with a clear message.
        (secrets / "admin-token").write_text('to"ken\n')
        bad = run_init_script(script, {"TEMPLATE": str(template), "SECRETS_DIR": str(secrets), "OUT": str(out)}, tmp)
        assert bad.returncode != 0 and "admin-token must be non-empty" in bad.stderr, bad.stderr
        # A config with a problem: mcplb check refuses it, naming the key.
        (secrets / "admin-token").write_text(values["admin-token"])
        template.write_text(local.replace("[admin]\n", "[admin]\nlsten = 1\n"))
        bad = run_init_script(script, {"TEMPLATE": str(template), "SECRETS_DIR": str(secrets), "OUT": str(out)}, tmp)
        assert bad.returncode == 2 and "admin.lsten" in bad.stderr, bad.stderr


def kubelet_update(secrets: Path, name: str, text: str) -> None:
    """Changes one key of a Secret volume as the kubelet does: the files are links into a
    `..data` directory, swapped in one rename."""
    stamp = f"..{os.urandom(4).hex()}"
    (secrets / stamp).mkdir()
    for f in secrets.iterdir():
        if not f.name.startswith("..") and f.name != name:
            (secrets / stamp / f.name).write_text(f.read_text())
    (secrets / stamp / name).write_text(text)
    tmp_link = secrets / "..data_tmp"
    tmp_link.symlink_to(stamp)
    tmp_link.replace(secrets / "..data")
    for f in (secrets / stamp).iterdir():
        link = secrets / f.name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(Path("..data") / f.name)


def rotate_keys_as_the_secret_says(proxy, url: str, secrets: Path, admin_port: int, token: str, old_sid: str) -> None:
    """secret.yaml's rotation, step by step, on the running pod: no restart, no call: each step
    is seen by the watch; a session of the old key lives until the last step."""
    import time

    admin = {"authorization": f"Bearer {token}"}

    def generation() -> int:
        return httpx.get(f"http://127.0.0.1:{admin_port}/stats", headers=admin).json()["config_generation"]

    def call(sid: str) -> int:
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}}
        hdrs = {"accept": "application/json, text/event-stream", "mcp-session-id": sid}
        return httpx.post(url, json=body, headers=hdrs).status_code

    def step(text: str) -> None:
        before = generation()
        kubelet_update(secrets, "session-keys", text)
        deadline = time.monotonic() + 20
        while generation() == before:
            assert time.monotonic() < deadline, "the keys file change was not picked up"
            time.sleep(0.05)

    old = (secrets / "session-keys").read_text().split()[0]
    new = base64.b64encode(os.urandom(32)).decode()
    assert call(old_sid) == 200
    step(f"{old}\n{new}\n")
    assert call(old_sid) == 200
    step(f"{new}\n{old}\n")
    init_body = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    r = httpx.post(url, json=init_body, headers={"accept": "application/json, text/event-stream"})
    new_sid = r.headers["mcp-session-id"]
    assert call(old_sid) == 200 and call(new_sid) == 200
    step(f"{new}\n")
    assert call(new_sid) == 200
    assert call(old_sid) == 404


def test_plain_manifests_pod_runs_here(tmp_path):
    run_pod_here(by_kind(plain_objects()), tmp_path)


@pytest.mark.parametrize("variant", list(CHART_VARIANTS))
def test_chart_pod_runs_here(variant, tmp_path):
    run_pod_here(by_kind(render_chart(CHART_VARIANTS[variant])), tmp_path)
