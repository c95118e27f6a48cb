"""Launch configurations for a plan: per-node torchrun scripts, a Slurm batch script and a
Kubernetes Indexed Job (with its headless Service and the plan in a ConfigMap).

Every form starts the same ranks: rank r on node r // gpus_per_node (planner.layout), so
node i runs ranks [i * gpus_per_node, ...) with ``python -m executor --plan plan.json``.
Rendezvous is torchrun's static backend (``--master-addr/--master-port`` + ``--node-rank``):
it pins global ranks to node ranks, which the plan's layout relies on (the c10d backend
assigns node ranks in arrival order).  The last node may run fewer ranks than the others.

Replicas (plan.serving): each replica is its own torchrun group of the plan's ranks, with
its own rendezvous.  A replica smaller than a node shares nodes with others
(gpus_per_node // world replicas per node, each on its own GPUs via CUDA_VISIBLE_DEVICES
and its own master port); a larger one takes whole nodes.  torchrun: one script per
(replica, node), torchrun_replica<r>_node<i>.sh (torchrun_node<i>.sh with one replica);
Slurm: a job array, one array task per replica; Kubernetes: one Indexed Job (and headless
Service) per replica, all sharing the plan's ConfigMap.  The router that sends requests to
replicas is stated in each file's header.
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
    """Processes per node of one replica: [gpus_per_node, ..., remainder]."""
    world, gpn = plan.world_size, plan.cluster.gpus_per_node
    nodes = math.ceil(world / gpn)
    return [min(gpn, world - i * gpn) for i in range(nodes)]


def replicas_per_node(plan: Plan) -> int:
    """Replicas that share one node (1 when a replica takes whole nodes)."""
    return max(1, plan.cluster.gpus_per_node // plan.world_size)


def replica_place(plan: Plan, replica: int) -> tuple:
    """(first node, first GPU on it, master port) of a replica."""
    k = replicas_per_node(plan)
    if k > 1:
        slot = replica % k
        return replica // k, slot * plan.world_size, MASTER_PORT + slot
    return replica * len(node_ranks(plan)), 0, MASTER_PORT


def nodes_needed(plan: Plan) -> int:
    reps = plan.serving.replicas
    k = replicas_per_node(plan)
    return math.ceil(reps / k) if k > 1 else reps * len(node_ranks(plan))


def _name(plan: Plan, replica: int | None = None) -> str:
    base = f"fapool-{plan.plan_id}"          # DNS-1123: lowercase hex id
    return base if replica is None or plan.serving.replicas == 1 else f"{base}-r{replica}"


def _torchrun(nnodes: int, node_rank: str, nproc: str, plan_path: str) -> str:
    """The one torchrun command line every form uses (node_rank / nproc may be shell
    expressions)."""
    return (f"torchrun --nnodes={nnodes} --node-rank={node_rank} --nproc-per-node={nproc} "
            f"--rdzv-backend=static --master-addr=\"$MASTER_ADDR\" "
            f"--master-port=\"$MASTER_PORT\" --max-restarts=0 "
            f"-m executor --plan {plan_path}")


def one_line(text: str) -> str:
    """A string as it may stand inside a one-line comment of a script or manifest: every
    character that is not printable (newline, CR, NUL, U+2028, ...) shown as its escape, so
    the comment can never end early.  Names are validated on load (calibration.errors.
    safe_name); this holds whatever reaches the writer."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def _header(plan: Plan) -> str:
    """Comment lines saying what the file launches; user strings through one_line."""
    sv = plan.serving
    lines = (f"FA Pool plan {plan.plan_id}: {plan.strategy.describe()}",
             f"model {plan.model.name}, cluster {plan.cluster.name}, {plan.world_size} ranks "
             f"on {len(node_ranks(plan))} node(s) per replica",
             f"{sv.replicas} replica(s) ({nodes_needed(plan)} node(s) in all), at most "
             f"{sv.max_batch} requests in flight each; router: {sv.router} (planner.serving);"
             f" pools: {sv.to_dict()['pool']}")
    return "".join(f"# {one_line(line)}\n" for line in lines)


def _visible(plan: Plan, replica: int) -> str:
    """The CUDA_VISIBLE_DEVICES line of a replica that shares its node ('' otherwise)."""
    if replicas_per_node(plan) == 1:
        return ""
    _, gpu, _ = replica_place(plan, replica)
    devices = ",".join(str(gpu + i) for i in range(plan.world_size))
    return f'export CUDA_VISIBLE_DEVICES="${{CUDA_VISIBLE_DEVICES:-{devices}}}"\n'


def torchrun_script(plan: Plan, node: int, replica: int = 0) -> str:
    counts = node_ranks(plan)
    first = sum(counts[:node])
    first_node, _, port = replica_place(plan, replica)
    return (
        "#!/usr/bin/env bash\n"
        + _header(plan)
        + f"# replica {replica}, its node {node} of {len(counts)} (cluster node "
          f"{first_node + node}): ranks {first}..{first + counts[node] - 1} of the replica\n"
        "# Run on that node; MASTER_ADDR is the address of the replica's node 0 (same value\n"
        "# on each of its nodes).\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")/.."\n'
        'MASTER_ADDR="${MASTER_ADDR:?set MASTER_ADDR to the address of node 0 of this replica}"\n'
        f'MASTER_PORT="${{MASTER_PORT:-{port}}}"\n'
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"\n'
        + _visible(plan, replica)
        + f"exec {_torchrun(len(counts), str(node), str(counts[node]), 'plan.json')}\n")


def slurm_script(plan: Plan) -> str:
    counts = node_ranks(plan)
    gpn = plan.cluster.gpus_per_node
    last = len(counts) - 1
    nproc = (str(gpn) if counts[-1] == gpn else
             f"$(( SLURM_NODEID == {last} ? {counts[-1]} : {gpn} ))")
    inner = _torchrun(len(counts), "$SLURM_NODEID", nproc, '"$PLAN"')
    reps = plan.serving.replicas
    shared = replicas_per_node(plan) > 1       # a replica takes part of a node
    per_node = plan.world_size if shared else gpn
    array = f"#SBATCH --array=0-{reps - 1}\n" if reps > 1 else ""
    return (
        "#!/usr/bin/env bash\n"
        f"#SBATCH --job-name={_name(plan)}\n"
        + array
        + f"#SBATCH --nodes={len(counts)}\n"
        "#SBATCH --ntasks-per-node=1\n"
        f"#SBATCH --gpus-per-node={per_node}\n"
        f"#SBATCH --cpus-per-task={max(1, 8 * per_node)}\n"
        + ("" if shared else "#SBATCH --exclusive\n")
        + f"#SBATCH --output={_name(plan)}-%{'A_%a' if reps > 1 else 'j'}.out\n"
        + _header(plan)
        + ("# One array task per replica (SLURM_ARRAY_TASK_ID); each is its own torchrun "
           "group.\n" if reps > 1 else "")
        + "# Submit from the plan directory: sbatch launch/slurm.sbatch\n"
        "set -euo pipefail\n"
        'PLAN="${PLAN:-$PWD/plan.json}"\n'
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"\n'
        + (f'MASTER_PORT="${{MASTER_PORT:-$(( {MASTER_PORT} + ${{SLURM_ARRAY_TASK_ID:-0}} % 100 '
           '))}"\n' if reps > 1 else f'MASTER_PORT="${{MASTER_PORT:-{MASTER_PORT}}}"\n')
        + "export PLAN MASTER_ADDR MASTER_PORT OMP_NUM_THREADS=1\n"
        "# one task per node; each starts torchrun for that node's ranks\n"
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(inner)}\n")


def k8s_manifest(plan: Plan) -> str:
    """ConfigMap (plan.json) + per replica a headless Service and an Indexed Job, one pod per
    node of the replica.  Pod i's hostname is <job>-i and the Service (name = the pods'
    subdomain) gives it the DNS name <job>-i.<service>, so rank 0's node is
    <job>-0.<service>."""
    import yaml

    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"{_name(plan)}-plan",
                           "labels": {"app": "fa-pool", "fa-pool/plan": plan.plan_id}},
              "data": {"plan.json": json.dumps(plan.to_dict(), indent=1)}}
    docs = [config]
    for r in range(plan.serving.replicas):
        docs += _k8s_replica(plan, r)
    head = "".join(f"{line}\n" for line in _header(plan).splitlines())
    return head + yaml.safe_dump_all(docs, sort_keys=False)


def _k8s_replica(plan: Plan, replica: int) -> list:
    """[Service, Job] of one replica."""
    counts = node_ranks(plan)
    gpn = min(plan.cluster.gpus_per_node, plan.world_size)
    name = _name(plan, replica)
    last = len(counts) - 1
    nproc = (str(gpn) if counts[-1] == gpn else
             f"$(( JOB_COMPLETION_INDEX == {last} ? {counts[-1]} : {gpn} ))")
    command = "export OMP_NUM_THREADS=1; exec " + _torchrun(
        len(counts), "$JOB_COMPLETION_INDEX", nproc, "/plan/plan.json")
    labels = {"app": "fa-pool", "fa-pool/plan": plan.plan_id,
              "fa-pool/replica": str(replica)}
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
                                              "configMap": {"name": f"{_name(plan)}-plan"}},
                                             {"name": "dshm",
                                              "emptyDir": {"medium": "Memory"}}]}}}}
    return [service, job]


def render_launch_configs(plan: Plan) -> dict:
    """{file name: text}: torchrun_node<i>.sh per node (torchrun_replica<r>_node<i>.sh per
    replica and node with several replicas), slurm.sbatch, k8s.yaml."""
    nodes = range(len(node_ranks(plan)))
    if plan.serving.replicas == 1:
        out = {f"torchrun_node{i}.sh": torchrun_script(plan, i) for i in nodes}
    else:
        out = {f"torchrun_replica{r}_node{i}.sh": torchrun_script(plan, i, r)
               for r in range(plan.serving.replicas) for i in nodes}
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
