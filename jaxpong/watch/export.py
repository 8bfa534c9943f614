"""A trained policy as one self-describing file: parameters plus the config that says how to use them.

The file is msgpack (flax.serialization): a map whose first entry is `format: jaxpong-policy`, then
the format version, the resolved config and a description of where the parameters came from (both
as JSON text, readable by any msgpack tool), then the parameter tree with arrays in flax's msgpack
array encoding (dtype, shape, raw bytes). Nothing in it is pickled, so loading it runs no code.
`eval` and `video` accept such a file wherever they accept a run directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from jaxpong.base.errors import ConfigError

FORMAT = "jaxpong-policy"
FORMAT_VERSION = 1
# msgpack map markers (fixmap, map16, map32): a file that does not start with one is rejected unread.
_MAP_MARKERS = set(range(0x80, 0x90)) | {0xDE, 0xDF}


def export_policy(policy, out: str | Path) -> dict:
    """Write `policy` (a jaxpong.watch.policy.Policy) to `out`; returns the description stored with it."""
    from flax import serialization

    from jaxpong.base.config import to_dict
    from jaxpong.play.envs import frame_shape
    from jaxpong.store.rundir import versions

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a directory; give a file name such as policy.msgpack")
    cfg = policy.cfg
    stack, height, width = frame_shape(cfg.model)
    description = {
        "algo": cfg.algo.algo,
        "network": cfg.model.network,
        "obs_mode": cfg.model.obs_mode,
        "envpool_frames": {"stack": stack, "height": height, "width": width, "gray_scale": True},
        "actions": list(cfg.model.actions),
        "preset": cfg.preset_name,
        "source": policy.source,
        "agent_step": policy.step,
        "parameters": int(sum(np.size(x) for x in _leaves(policy.params))),
        "versions": versions(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(to_dict(cfg)),
        "description": json.dumps(description),
        "params": serialization.to_state_dict(_to_numpy(policy.params)),
    }
    payload = serialization.msgpack_serialize(doc)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(payload)
        os.replace(tmp, out)
    except OSError as err:
        raise ConfigError(f"--out {str(out)!r} cannot be written ({err.strerror}); choose a writable place") from None
    return description


def read_policy_file(path: str | Path) -> tuple[dict, dict, dict]:
    """(config mapping, parameter tree of numpy arrays, description) from a file `export` wrote."""
    from flax import serialization

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            if not head or head[0] not in _MAP_MARKERS:
                raise ConfigError(
                    f"{str(path)!r} is not a jaxpong policy file (nor a run directory); "
                    "give a run directory or a file written by `jaxpong export`"
                )
            data = head + f.read()
    except OSError as err:
        raise ConfigError(f"{str(path)!r} cannot be read ({err.strerror})") from None
    ours = FORMAT.encode() in data  # tells a damaged policy file from a file of another kind
    try:
        doc = serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several kinds for truncated or foreign input
        if ours:
            raise ConfigError(
                f"{str(path)!r} is a damaged jaxpong policy file ({type(err).__name__}); export it again"
            ) from None
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("params"), dict):
        raise ConfigError(
            f"{str(path)!r} is not a jaxpong policy file (nor a run directory); give a run directory "
            "or a file written by `jaxpong export`"
        )
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{str(path)!r} has policy-file format version {version!r}; this jaxpong reads version "
            f"{FORMAT_VERSION}; export it again with this version"
        )
    try:
        config = json.loads(doc["config"])
        description = json.loads(doc.get("description") or "{}")
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{str(path)!r} is a damaged jaxpong policy file (its config is unreadable)") from None
    return config, doc["params"], description


def _to_numpy(tree):
    import jax

    return jax.tree.map(np.asarray, tree)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)
