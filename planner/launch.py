"""Launch configurations for a plan: per-node torchrun scripts, a Slurm batch script and a
Kubernetes Indexed Job (with its headless Service and the plan in a ConfigMap).

Every form starts the same ranks: rank r on node r // gpus_per_node (planner.layout), so
node i runs ranks [i * gpus_per_node, ...) with ``python -m executor --plan plan.json``.
Rendezvous is torchrun's static backend (``--master-addr/--master-port`` + ``--node-rank``):
it pins global ranks to node ranks, which the plan's layout relies on (the c10d backend
assigns node ranks in arrival order).  The last node may run fewer ranks than the others.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from planner.plan import Plan

MASTER_PORT = 29500
IMAGE = "fa-pool:latest"      # an image with this repository installed (`pip install .[gpu]`)


def node_ranks(plan: Plan) -> list:
    """Processes per node: [gpus_per_node, ..., remainder]."""
    world, gpn = plan.world_size, plan.cluster.gpus_per_node
    nodes = math.ceil(world / gpn)
    return [min(gpn, world - i * gpn) for i in range(nodes)]


def _name(plan: Plan) -> str:
    return f"fapool-{plan.plan_id}"          # DNS-1123: lowercase hex id


def _torchrun(nnodes: int, node_rank: str, nproc: str, plan_path: str) -> str:
    """The one torchrun command line every form uses (node_rank / nproc may be shell
    expressions)."""
    return (f"torchrun --nnodes={nnodes} --node-rank={node_rank} --nproc-per-node={nproc} "
            f"--rdzv-backend=static --master-addr=\"$MASTER_ADDR\" "
            f"--master-port=\"$MASTER_PORT\" --max-restarts=0 "
            f"-m executor --plan {plan_path}")


def _header(plan: Plan) -> str:
    return (f"# FA Pool plan {plan.plan_id}: {plan.strategy.describe()}\n"
            f"# model {plan.model.name}, cluster {plan.cluster.name}, {plan.world_size} ranks "
            f"on {len(node_ranks(plan))} node(s)\n")


def torchrun_script(plan: Plan, node: int) -> str:
    counts = node_ranks(plan)
    first = sum(counts[:node])
    return (
        "#!/usr/bin/env bash\n"
        + _header(plan)
        + f"# node {node} of {len(counts)}: global ranks {first}..{first + counts[node] - 1}\n"
        "# Run on that node; MASTER_ADDR is node 0's address (same value on every node).\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")/.."\n'
        'MASTER_ADDR="${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"\n'
        f'MASTER_PORT="${{MASTER_PORT:-{MASTER_PORT}}}"\n'
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"\n'
        f"exec {_torchrun(len(counts), str(node), str(counts[node]), 'plan.json')}\n")


def slurm_script(plan: Plan) -> str:
    counts = node_ranks(plan)
    gpn = plan.cluster.gpus_per_node
    last = len(counts) - 1
    nproc = (str(gpn) if counts[-1] == gpn else
             f"$(( SLURM_NODEID == {last} ? {counts[-1]} : {gpn} ))")
    inner = _torchrun(len(counts), "$SLURM_NODEID", nproc, '"$PLAN"')
    return (
        "#!/usr/bin/env bash\n"
        f"#SBATCH --job-name={_name(plan)}\n"
        f"#SBATCH --nodes={len(counts)}\n"
        "#SBATCH --ntasks-per-node=1\n"
        f"#SBATCH --gpus-per-node={gpn}\n"
        f"#SBATCH --cpus-per-task={max(1, 8 * gpn)}\n"
        "#SBATCH --exclusive\n"
        f"#SBATCH --output={_name(plan)}-%j.out\n"
        + _header(plan)
        + "# Submit from the plan directory: sbatch launch/slurm.sbatch\n"
        "set -euo pipefail\n"
        'PLAN="${PLAN:-$PWD/plan.json}"\n'
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"\n'
        f'MASTER_PORT="${{MASTER_PORT:-{MASTER_PORT}}}"\n'
        "export PLAN MASTER_ADDR MASTER_PORT OMP_NUM_THREADS=1\n"
        "# one task per node; each starts torchrun for that node's ranks\n"
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(inner)}\n")


def k8s_manifest(plan: Plan) -> str:
    """ConfigMap (plan.json) + headless Service + Indexed Job, one pod per node.  Pod i's
    hostname is <job>-i and the Service (name = the pods' subdomain) gives it the DNS name
    <job>-i.<service>, so rank 0's node is <job>-0.<service>."""
    import yaml

    counts = node_ranks(plan)
    gpn = plan.cluster.gpus_per_node
    name = _name(plan)
    last = len(counts) - 1
    nproc = (str(gpn) if counts[-1] == gpn else
             f"$(( JOB_COMPLETION_INDEX == {last} ? {counts[-1]} : {gpn} ))")
    command = "export OMP_NUM_THREADS=1; exec " + _torchrun(
        len(counts), "$JOB_COMPLETION_INDEX", nproc, "/plan/plan.json")
    labels = {"app": "fa-pool", "fa-pool/plan": plan.plan_id}
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"{name}-plan", "labels": labels},
              "data": {"plan.json": json.dumps(plan.to_dict(), indent=1)}}
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "labels": labels},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                        "selector": {"job-name": name},
                        "ports": [{"name": "rendezvous", "port": MASTER_PORT}]}}
    container = {
        "name": "executor", "image": IMAGE, "workingDir": "/plan",
        "command": ["bash", "-c", command],
        "env": [{"name": "MASTER_ADDR", "value": f"{name}-0.{name}"},
                {"name": "MASTER_PORT", "value": str(MASTER_PORT)}],
        "ports": [{"containerPort": MASTER_PORT, "name": "rendezvous"}],
        "resources": {"limits": {"nvidia.com/gpu": gpn}},
        "volumeMounts": [{"name": "plan", "mountPath": "/plan", "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}]}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "labels": labels},
           "spec": {"completionMode": "Indexed", "completions": len(counts),
                    "parallelism": len(counts), "backoffLimit": 0,
                    "activeDeadlineSeconds": int(max(600, 4 * plan.executor.timeout_s)),
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"subdomain": name, "restartPolicy": "Never",
                                 "containers": [container],
                                 "volumes": [{"name": "plan",
                                              "configMap": {"name": f"{name}-plan"}},
                                             {"name": "dshm",
                                              "emptyDir": {"medium": "Memory"}}]}}}}
    head = "".join(f"{line}\n" for line in _header(plan).splitlines())
    return head + yaml.safe_dump_all([config, service, job], sort_keys=False)


def render_launch_configs(plan: Plan) -> dict:
    """{file name: text}: torchrun_node<i>.sh per node, slurm.sbatch, k8s.yaml."""
    out = {f"torchrun_node{i}.sh": torchrun_script(plan, i)
           for i in range(len(node_ranks(plan)))}
    out["slurm.sbatch"] = slurm_script(plan)
    out["k8s.yaml"] = k8s_manifest(plan)
    return out


def write_launch_configs(plan: Plan, out_dir: str | Path) -> list:
    """Write render_launch_configs(plan) into out_dir (created); scripts executable.
    `fapool plan` passes <out>/launch, next to <out>/plan.json, which the scripts run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_launch_configs(plan).items():
        path = out_dir / name
        path.write_text(text)
        if name.endswith((".sh", ".sbatch")):
            path.chmod(0o755)
        paths.append(path)
    return paths
