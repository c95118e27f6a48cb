"""User strings cannot change what a generated file executes or declares.

Names are validated where they are loaded (model, cluster, profile, link names: a safe
character set and a length limit), and every writer escapes what it writes anyway: launch
scripts and manifests carry names only inside one-line comments (planner.launch.one_line),
k8s.yaml is serialised by yaml.safe_dump_all, report.html escapes.  The files are read,
never executed."""

import json
from dataclasses import replace

import pytest
import yaml

from calibration.errors import InputError
from calibration.profile import Profile, load_profile
from planner.cli import main
from planner.cluster import resolve_cluster
from planner.launch import render_launch_configs
from planner.model import PRESETS
from planner.plan import make_plan
from planner.strategy import FAPoolStrategy
from planner.workload import Workload

PAYLOADS = ["a\nrm -rf ~", "a\rtouch pwned", "a'b", 'a"b', "a$(touch pwned)", "a`id`",
            "a\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: evil}",
            "a\u2028b", "a\x85b", "</title><script>alert(1)</script>", "a #b", "a;b", ""]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_names_with_unsafe_characters_are_refused_where_they_are_loaded(payload):
    with pytest.raises(InputError, match="model.name"):
        replace(PRESETS["tiny"], name=payload)
    with pytest.raises(InputError, match="cluster.name"):
        replace(resolve_cluster("local"), name=payload)
    raw = load_profile("local").to_dict()
    with pytest.raises(InputError, match="profile.name"):
        Profile.from_dict(dict(raw, name=payload))


def test_a_name_too_long_is_refused():
    with pytest.raises(InputError, match="at most 200"):
        replace(PRESETS["tiny"], name="m" * 201)
    assert replace(PRESETS["tiny"], name="meta-llama/Llama-2-7b-hf").name


@pytest.mark.parametrize("payload", ["x\nkind: Pod", "x $(id)", "x`id`"])
def test_an_hf_config_name_is_refused_in_one_line_with_exit_2(payload, tmp_path, capsys):
    cfg = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
           "vocab_size": 1000, "_name_or_path": payload}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["simulate", "--model", str(path), "--cluster", "local", "--tp", "1",
                 "--seq-len", "64", "--batch", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json._name_or_path" in err


def _forced(name: str):
    """A plan whose model and cluster names bypassed validation (as if a writer received
    them some other way): the writers alone must hold."""
    model, cluster = replace(PRESETS["tiny"]), replace(resolve_cluster("local"))  # copies:
    plan = make_plan(model, cluster, FAPoolStrategy(base_tp=1, threshold=16, max_pool=2),
                     Workload(2, 256, 4), load_profile("local"))     # the presets stay as
    object.__setattr__(model, "name", name)                          # they are
    object.__setattr__(cluster, "name", name)
    assert plan.model is model and PRESETS["tiny"].name == "tiny"
    return plan


def _code(text: str) -> list:
    """The lines of a script or manifest outside comments."""
    return [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("payload", PAYLOADS[:-1])
def test_writers_escape_names_that_reach_them(payload):
    def render(name):        # the plan id hashes the plan (its names): set it aside
        plan = _forced(name)
        return {f: t.replace(plan.plan_id, "ID") for f, t in render_launch_configs(plan).items()}
    benign, hostile = render("m"), render("m" + payload)
    assert benign.keys() == hostile.keys()
    for name, text in hostile.items():
        if name.endswith((".sh", ".sbatch")):
            # no comment ended early: the same lines, and the same lines outside comments
            assert len(text.splitlines()) == len(benign[name].splitlines()), name
            assert _code(text) == _code(benign[name]), name
    # the manifest's comment header keeps its lines (the rest is YAML-serialised)
    head = [ln for ln in hostile["k8s.yaml"].splitlines() if ln.startswith("#")]
    assert len(head) == len([ln for ln in benign["k8s.yaml"].splitlines()
                             if ln.startswith("#")])
    docs, plain = (list(yaml.safe_load_all(t["k8s.yaml"])) for t in (hostile, benign))
    assert [d["kind"] for d in docs] == [d["kind"] for d in plain]     # exactly its documents
    # the only difference is the plan.json the ConfigMap carries, and it parses to the plan
    assert docs[1:] == plain[1:]
    carried = json.loads(docs[0]["data"]["plan.json"])
    assert carried["model"]["name"] == "m" + payload


def test_out_dirs_with_unsafe_names_do_not_reach_the_files(tmp_path, capsys):
    """--out appears in no generated file: the scripts find plan.json beside themselves."""
    texts = []
    for out in (tmp_path / "plain", tmp_path / "x$(touch pwned)\n`id`'\""):
        assert main(["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2",
                     "--workload", "fixed:128", "--requests", "4", "--batch", "2",
                     "--output-len", "4", "--out", str(out)]) == 0, capsys.readouterr().err
        files = {p.name: p.read_text() for p in (out / "launch").iterdir()}
        docs = list(yaml.safe_load_all(files.pop("k8s.yaml")))
        docs[0]["data"] = None        # the plan.json it carries holds its creation time
        texts.append((files, docs))
        assert "pwned" not in (out / "report.html").read_text()
    assert texts[0] == texts[1]
    assert not (tmp_path / "pwned").exists()


def test_a_hostile_trace_name_is_escaped_in_the_report(tmp_path, capsys):
    """The trace's file name is the workload's name, shown in report.html's title."""
    trace = tmp_path / "x<img src=x onerror=alert(1)>'$(id).csv"
    trace.write_text("arrival_s,input_len,output_len\n0,128,4\n0.5,256,4\n")
    out = tmp_path / "out"
    assert main(["plan", "--model", "tiny", "--cluster", "local", "--gpus", "2",
                 "--workload", str(trace), "--batch", "2", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    html = (out / "report.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
