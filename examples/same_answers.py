"""Ask OpenAI-compatible servers the same quickstart prompts greedily and show whether they agree.

    python examples/same_answers.py --base-url http://127.0.0.1:8011/v1 --base-url http://127.0.0.1:8012/v1

Each server is asked for MODEL (default: quickstart, the run's served name) at temperature 0; the
answers are printed per server, then "same answers" (exit 0) or "answers differ" (exit 1).
It needs the `openai` package (in SmoLoRA's dev extras and in .venv-vllm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openai import OpenAI

EVAL = Path(__file__).resolve().parent / "data" / "quickstart_eval.jsonl"


def quickstart_prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    return [r["instruction"] for r in rows[:n]]


def answers(base_url: str, model: str, prompts: list[str], api_key: str, max_tokens: int) -> list[str]:
    client = OpenAI(base_url=base_url, api_key=api_key)
    out = []
    for prompt in prompts:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=max_tokens,
        )
        out.append(r.choices[0].message.content or "")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", action="append", required=True, help="a server's /v1 URL (repeat)")
    p.add_argument("--model", default="quickstart", help="the served name to ask for")
    p.add_argument("--prompts", type=int, default=2, help="how many quickstart eval prompts")
    p.add_argument("--max-tokens", type=int, default=48, help="the quickstart eval's max_new_tokens")
    p.add_argument("--api-key", default="none", help="sent as Bearer (servers without a key ignore it)")
    args = p.parse_args()
    prompts = quickstart_prompts(args.prompts)
    seen = {}
    for url in args.base_url:
        seen[url] = answers(url, args.model, prompts, args.api_key, args.max_tokens)
        print(f"{url}:")
        for prompt, answer in zip(prompts, seen[url], strict=True):
            print(f"  {prompt.splitlines()[-1]!r}\n    -> {answer!r}")
    same = len({tuple(a) for a in seen.values()}) == 1
    print("same answers" if same else "answers differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
