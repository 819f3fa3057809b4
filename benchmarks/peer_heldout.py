"""Run one peer script (../shared/bench/peers.py) unchanged, then score what it trained on held-out rows.

peers.py trains and prints its PEER_RESULT (speed, peak RSS) but keeps no model. This runner loads
it as a module, remembers the Trainer it builds, lets its main() run and print as usual, and then
scores that Trainer's model on --heldout with smolora.bench.heldout (the one loss every tool of
`smolora bench` is judged by: float32, eval mode), printing the PEER_RESULT again with
heldout_loss added. The peak RSS is the peer's own, read before the scoring.

Run as:
    python benchmarks/peer_heldout.py --heldout heldout.jsonl --peers ../shared/bench/peers.py -- \\
        --mode grouped --model DIR --data train.jsonl --steps 2 --warmup 1 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heldout", type=Path, required=True)
    parser.add_argument("--peers", type=Path, required=True, help="the peers.py to run")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then peers.py's own arguments")
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest

    spec = importlib.util.spec_from_file_location("peers", args.peers)
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    built = []
    counting = peers.counting

    def remembering(base):
        cls = counting(base)

        class Remembered(cls):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                built.append(self)

        return Remembered

    peers.counting = remembering
    sys.argv = [str(args.peers), *rest]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        peers.main()
    print(out.getvalue(), end="", flush=True)
    line = next(x for x in reversed(out.getvalue().splitlines()) if x.startswith("PEER_RESULT "))
    result = json.loads(line[len("PEER_RESULT ") :])

    from smolora.bench.heldout import heldout_loss

    trainer = built[-1]
    result["heldout_loss"] = heldout_loss(trainer.model, trainer.processing_class, args.heldout)
    print("PEER_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
