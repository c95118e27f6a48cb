"""Launch configs: per-node torchrun scripts (bash -n), Slurm script, Kubernetes YAML."""

import re
import shlex
import subprocess

import pytest
import yaml

from calibration.profile import load_profile
from planner.cli import main
from planner.cluster import resolve_cluster
from planner.launch import node_ranks, render_launch_configs, write_launch_configs
from planner.model import PRESETS
from calibration.errors import InputError
from planner.plan import load_plan, make_plan, plan_from_dict as load_plan_dict
from planner.serving import Serving
from planner.strategy import FAPoolStrategy, StaticStrategy
from planner.workload import Workload

A100 = resolve_cluster("dgx-a100")
PROFILE = load_profile("dgx-a100")


def plan_of(strategy):
    return make_plan(PRESETS["paper-4l"], A100, strategy, Workload(64, 8192, 32), PROFILE)


PLANS = {"fapool-40": plan_of(FAPoolStrategy(base_tp=8, max_pool=32)),       # 5 full nodes
         "fapool-12": plan_of(FAPoolStrategy(base_tp=8, max_pool=4)),        # 8 + 4
         "static-16": plan_of(StaticStrategy(tp=8, pp=2))}


def flags(cmd: str) -> dict:
    return dict(re.findall(r"--([a-z-]+)=(\S+)", cmd))


@pytest.mark.parametrize("name", PLANS)
def test_torchrun_scripts_per_node(name, tmp_path):
    plan = PLANS[name]
    files = render_launch_configs(plan)
    counts = node_ranks(plan)
    assert sum(counts) == plan.world_size
    scripts = sorted(f for f in files if f.startswith("torchrun_node"))
    assert scripts == sorted(f"torchrun_node{i}.sh" for i in range(len(counts)))
    for i, count in enumerate(counts):
        text = files[f"torchrun_node{i}.sh"]
        path = tmp_path / f"n{i}.sh"
        path.write_text(text)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
        line = next(ln for ln in text.splitlines() if ln.startswith("exec torchrun"))
        f = flags(line)
        assert f["nnodes"] == str(len(counts)) and f["node-rank"] == str(i)
        assert f["nproc-per-node"] == str(count)
        assert f["rdzv-backend"] == "static" and "master-addr" in f and "master-port" in f
        assert line.endswith("-m executor --plan plan.json")


def test_heterogeneous_last_node():
    assert node_ranks(PLANS["fapool-12"]) == [8, 4]
    assert node_ranks(PLANS["fapool-40"]) == [8] * 5


@pytest.mark.parametrize("name", PLANS)
def test_slurm_script(name, tmp_path):
    plan = PLANS[name]
    text = render_launch_configs(plan)["slurm.sbatch"]
    path = tmp_path / "s.sbatch"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    sb = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)$", text, re.M))
    assert sb["nodes"] == str(len(node_ranks(plan)))
    assert sb["ntasks-per-node"] == "1"
    assert sb["gpus-per-node"] == str(A100.gpus_per_node)
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    inner = shlex.split(srun)[-1]                  # the bash -c program
    f = flags(inner)
    assert f["node-rank"] == "$SLURM_NODEID" and f["nnodes"] == sb["nodes"]
    assert "-m executor --plan" in inner
    if node_ranks(plan)[-1] != A100.gpus_per_node:
        assert "SLURM_NODEID ==" in f["nproc-per-node"] or "SLURM_NODEID" in inner


@pytest.mark.parametrize("name", PLANS)
def test_k8s_indexed_job_with_headless_service(name):
    plan = PLANS[name]
    docs = list(yaml.safe_load_all(render_launch_configs(plan)["k8s.yaml"]))
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"ConfigMap", "Service", "Job"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
    svc, job, cm = by_kind["Service"], by_kind["Job"], by_kind["ConfigMap"]
    assert svc["apiVersion"] == "v1" and svc["spec"]["clusterIP"] == "None"
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    nodes = len(node_ranks(plan))
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert svc["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    (c,) = pod["containers"]
    assert c["name"] and c["image"] and c["command"][:2] == ["bash", "-c"]
    f = flags(c["command"][2])
    assert f["node-rank"] == "$JOB_COMPLETION_INDEX" and f["nnodes"] == str(nodes)
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == A100.gpus_per_node
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "plan")
    assert vols["plan"]["configMap"]["name"] == cm["metadata"]["name"]
    assert "/plan/plan.json" in c["command"][2] and mount["mountPath"] == "/plan"
    assert "plan.json" in cm["data"]


def test_replicas_get_a_torchrun_group_an_array_task_and_a_job_each(tmp_path):
    """3 replicas of TP=2 on 8-GPU nodes: two share node 0 (GPUs 0-1, 2-3, own ports), the
    third ... each its own rendezvous; Slurm array 0-2; one k8s Job + Service per replica."""
    plan = make_plan(PRESETS["paper-4l"], A100, StaticStrategy(tp=2, pp=1),
                     Workload(8, 2048, 16), PROFILE, serving=Serving(replicas=3, max_batch=8))
    files = render_launch_configs(plan)
    scripts = sorted(f for f in files if f.startswith("torchrun"))
    assert scripts == [f"torchrun_replica{r}_node0.sh" for r in range(3)]
    ports, devices = set(), set()
    for r, name in enumerate(scripts):
        text = files[name]
        path = tmp_path / name
        path.write_text(text)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
        assert "router: least-outstanding-tokens" in text and "3 replica(s)" in text
        ports.add(re.search(r'MASTER_PORT="\$\{MASTER_PORT:-(\d+)\}"', text).group(1))
        devices.add(re.search(r'CUDA_VISIBLE_DEVICES:-([0-9,]+)', text).group(1))
        f = flags(next(ln for ln in text.splitlines() if ln.startswith("exec torchrun")))
        assert f["nnodes"] == "1" and f["nproc-per-node"] == "2"
    assert devices == {"0,1", "2,3", "4,5"} and len(ports) == 3
    sb = files["slurm.sbatch"]
    (tmp_path / "s.sbatch").write_text(sb)
    assert subprocess.run(["bash", "-n", str(tmp_path / "s.sbatch")]).returncode == 0
    assert "#SBATCH --array=0-2" in sb and "#SBATCH --gpus-per-node=2" in sb
    assert "--exclusive" not in sb and "router: least-outstanding-tokens" in sb
    docs = list(yaml.safe_load_all(files["k8s.yaml"]))
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert [d["kind"] for d in docs].count("ConfigMap") == 1
    assert len(jobs) == 3 == len({j["metadata"]["name"] for j in jobs})
    assert [d["kind"] for d in docs].count("Service") == 3
    for r, job in enumerate(jobs):
        assert job["metadata"]["labels"]["fa-pool/replica"] == str(r)
        (c,) = job["spec"]["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "router: least-outstanding-tokens" in files["k8s.yaml"]
    assert load_plan_dict(plan.to_dict()).serving == plan.serving


def test_replicas_beyond_the_cluster_are_refused():
    with pytest.raises(InputError, match="serving.replicas"):
        make_plan(PRESETS["paper-4l"], A100, StaticStrategy(tp=8, pp=2),
                  Workload(8, 2048, 16), PROFILE,
                  serving=Serving(replicas=A100.total_gpus // 16 + 1))


def test_write_launch_configs_makes_scripts_executable(tmp_path):
    paths = write_launch_configs(PLANS["static-16"], tmp_path)
    names = {p.name for p in paths}
    assert {"torchrun_node0.sh", "torchrun_node1.sh", "slurm.sbatch", "k8s.yaml"} == names
    assert (tmp_path / "torchrun_node0.sh").stat().st_mode & 0o111


def test_plan_cli_writes_everything_and_plan_loads(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["plan", "--gpus", "16", "--workload", "mixed", "--requests", "40",
                 "--batch", "32", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    plan = load_plan(out / "plan.json")
    assert set(p.name for p in (out / "launch").iterdir()) == set(render_launch_configs(plan))
    assert (out / "launch" / "slurm.sbatch").is_file()
    assert (out / "launch" / "k8s.yaml").is_file()
    html = (out / "report.html").read_text()
    assert "Pareto front" in html and "Memory per GPU" in html and "plotly" in html.lower()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]   # no temp left
    # --out is refused when not empty; nothing changes
    before = (out / "plan.json").read_text()
    assert main(["plan", "--gpus", "16", "--workload", "mixed", "--out", str(out)]) == 2
    assert (out / "plan.json").read_text() == before


@pytest.mark.slow
def test_plan_json_from_fapool_plan_runs_as_is(tmp_path, capsys):
    """`fapool plan` on this machine (cluster local, model tiny) -> `fapool run --plan`."""
    out = tmp_path / "local"
    assert main(["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2",
                 "--workload", "fixed:128", "--requests", "8", "--batch", "2",
                 "--output-len", "4", "--out", str(out)]) == 0
    plan = load_plan(out / "plan.json")
    capsys.readouterr()
    assert main(["run", "--plan", str(out / "plan.json"), "--json", "--no-store",
                 "--steps", "1", "--warmup", "0"]) == 0
    import json
    summary = json.loads(capsys.readouterr().out)
    assert summary["plan_id"] == plan.plan_id and summary["ttft_ms"] > 0
