"""Fine-tune through SmoLoRA's OpenAI-compatible fine-tuning API with the real `openai` client.

The quickstart data (instruction/output rows) becomes OpenAI's chat JSONL, is uploaded, a job
trains on the served base, and the finished `ft:...` model answers at once. See docs/jobs.md.

Run as:
    smolora serve runs/quickstart --jobs-config examples/jobs_quick.yaml &
    python examples/finetune_client.py http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import io
import json
import sys
import time

import openai


def chat_jsonl(path: str, limit: int) -> bytes:
    """instruction/output rows -> {"messages": [user, assistant]} lines."""
    out = io.StringIO()
    with open(path, encoding="utf-8") as f:
        for line in list(f)[:limit]:
            row = json.loads(line)
            turns = [
                {"role": "user", "content": row["instruction"]},
                {"role": "assistant", "content": row["output"]},
            ]
            out.write(json.dumps({"messages": turns}) + "\n")
    return out.getvalue().encode()


def main(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=sys.argv[2] if len(sys.argv) > 2 else "none")
    base = client.models.list().data[0].id
    train = client.files.create(
        file=("train.jsonl", chat_jsonl("examples/data/quickstart_train.jsonl", 360)), purpose="fine-tune"
    )
    valid = client.files.create(
        file=("valid.jsonl", chat_jsonl("examples/data/quickstart_eval.jsonl", 40)), purpose="fine-tune"
    )
    print("uploaded", train.id, train.bytes, "bytes;", valid.id, valid.bytes, "bytes")
    job = client.fine_tuning.jobs.create(
        model=base, training_file=train.id, validation_file=valid.id, suffix="orders", seed=1
    )
    print("created", job.id, job.status, "on", job.model)
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(2)
    print("finished", job.status, job.fine_tuned_model, job.trained_tokens, "tokens")
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data):
        print(" ", event.level, event.message)
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id).data:
        print("checkpoint", checkpoint.fine_tuned_model_checkpoint, checkpoint.metrics.to_dict())
    message = (
        "Extract the order from this customer message.\n\nMessage: Item: blue mug | Amount: 3 | City: Oslo"
    )
    for model in (base, job.fine_tuned_model):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": message}], max_tokens=24, temperature=0
        )
        print(f"{model}: {answer.choices[0].message.content!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1")
