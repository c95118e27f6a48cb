"""Uploaded files -> specs.  Each parser takes the file's bytes (what st.file_uploader or a
pasted text area gives) and raises InputError(field, problem) for anything wrong, so the
page shows one message instead of a traceback.

- model:   a Hugging Face config.json (planner.hf_config.model_from_hf_config), or a fa-pool
           model spec ({name, layers, hidden, ...}, ModelSpec.from_dict)
- profile: a hardware profile YAML (`fapool calibrate`), calibration.profile.Profile
- trace:   a workload trace, CSV `arrival_s,input_len,output_len` or JSONL with those keys
           (planner.workloads.load_trace)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from calibration.errors import InputError, require
from calibration.profile import Profile, parse_yaml
from planner.cluster import ClusterSpec
from planner.dashboard.scenario import require_links
from planner.hf_config import model_from_hf_config
from planner.model import ModelSpec
from planner.workloads import RequestWorkload, load_trace

MAX_UPLOAD_BYTES = 50 * 2**20


def _text(data: bytes, field: str) -> str:
    require(isinstance(data, (bytes, bytearray)), field, "expected the file's bytes")
    require(len(data) > 0, field, "the file is empty")
    require(len(data) <= MAX_UPLOAD_BYTES, field,
            f"{len(data) / 2**20:.0f} MiB is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(field, "not UTF-8 text (is it the right file?)") from None


# ------------------------------------------------------------------ model
def model_from_upload(data: bytes) -> ModelSpec:
    """A config.json (HF keys) or a fa-pool model spec, from bytes."""
    text = _text(data, "config.json")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError("config.json", f"not valid JSON (line {err.lineno}: {err.msg})"
                         ) from None
    except RecursionError:
        raise InputError("config.json", "not valid JSON (nested too deeply)") from None
    require(isinstance(raw, dict), "config.json", "must hold a JSON object")
    if "layers" in raw and "hidden" in raw:        # fa-pool's own ModelSpec.to_dict()
        try:
            return ModelSpec.from_dict(raw)
        except TypeError as err:
            raise InputError("model", f"malformed spec ({err})") from None
    # model_from_hf_config reads a path: hand it the same bytes in a private temp dir whose
    # name becomes the model's name when the file has no _name_or_path.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "uploaded-model" / "config.json"
        path.parent.mkdir()
        path.write_text(text)
        return model_from_hf_config(path)


# ------------------------------------------------------------------ profile
def profile_from_upload(data: bytes, cluster: ClusterSpec | None = None) -> Profile:
    """A profile YAML from bytes; with a cluster, also checks it has the cluster's links."""
    profile = Profile.from_dict(parse_yaml(_text(data, "profile"), "profile"))
    if cluster is not None:
        require_links(profile, cluster)
    return profile


# ------------------------------------------------------------------ trace
def trace_from_upload(data: bytes) -> RequestWorkload:
    """A trace (CSV with header arrival_s,input_len,output_len, or JSONL with those keys)
    from bytes, parsed by planner.workloads.load_trace (which reads a path: the bytes go to a
    private temp file named trace.csv / trace.jsonl, and that directory is cut from errors)."""
    text = _text(data, "trace")
    name = "trace.jsonl" if text.lstrip().startswith("{") else "trace.csv"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        try:
            return load_trace(path)
        except InputError as err:
            raise InputError(err.field, err.problem.replace(f"{tmp}/", "")) from None
