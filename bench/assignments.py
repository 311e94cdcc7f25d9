"""What one config change costs the master: every agent's assignment computed again.

After a change (a mapping created, a policy set, a release), the master sends each connected
agent its assignment (master/control.py `_push`): every mapping the agent is source, target or
relay of, with each target's link policy (store.assignment_for). They are computed one agent
after the other in effect (worker threads, one GIL), so the last agent of a fleet runs a new
mapping that much later. This builds a fleet in the store, in-process on SQLite: S servers in 3
regions of 2 groups each, M mappings from the first server to all the others, and times the
assignments of all S servers (median of --runs), and the size of one target's assignment as the
control link encodes it.

    python3 bench/assignments.py [--runs 3] [--fleets 10x10,50x10,50x50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import console, emit_json, machine_info, median, print_machine  # noqa: E402

from relaysync.master.store import Store  # noqa: E402
from relaysync.protocol.messages import ENCODER  # noqa: E402


def fleet(work: Path, servers: int, mappings: int) -> tuple[Store, list[str]]:
    store = Store(f"sqlite:///{work}/master.db")
    store.migrate()
    nodes = [f"{i:064x}" for i in range(servers)]
    for i, node in enumerate(nodes):
        store.upsert_server(
            node_id=node, name=f"s{i}", region=f"r{i % 3}", group=f"g{i % 6}", address=f"s{i}:1"
        )
    for m in range(mappings):
        store.create_mapping(
            name=f"m{m}",
            source="s0",
            source_path=f"/srv/site{m}",
            targets=[(f"s{i}", f"/srv/site{m}") for i in range(1, servers)],
        )
    return store, nodes


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fleets", default="10x10,50x10,50x50", help="SERVERSxMAPPINGS,...")
    args = ap.parse_args()
    info = machine_info()
    print_machine(info)
    results: dict[str, object] = {
        "bench": "assignments",
        **{f"machine_{k}": v for k, v in info.items()},
    }
    for shape in args.fleets.split(","):
        servers, mappings = (int(x) for x in shape.split("x"))
        with tempfile.TemporaryDirectory(prefix="relaysync-bench-assign-") as tmp:
            store, nodes = fleet(Path(tmp), servers, mappings)
            try:
                runs = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    for node in nodes:
                        store.assignment_for(node)
                    runs.append(time.perf_counter() - start)
                wire = len(ENCODER.encode(store.assignment_for(nodes[1])))
            finally:
                store.close()
        all_s = median(runs)
        console.print(
            f"{servers} servers, {mappings} mappings to {servers - 1} targets each: every "
            f"assignment {all_s * 1000:.0f} ms ({all_s / servers * 1000:.1f} ms an agent; runs "
            + ", ".join(f"{r * 1000:.0f}" for r in runs)
            + f" ms); a target's assignment {wire / 1024:.0f} KiB on the wire"
        )
        key = f"{servers}x{mappings}"
        results[f"all_assignments_s_{key}"] = round(all_s, 3)
        results[f"per_agent_ms_{key}"] = round(all_s / servers * 1000, 2)
        results[f"target_assignment_kib_{key}"] = round(wire / 1024, 1)
    emit_json(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
