"""The preference and reward objectives against TRL 1.16 on the same tiny batch: loss and gradients.

Each test builds TRL's own trainer around one tiny random Llama with a LoRA adapter (its B
matrices randomised, so the policy differs from the reference, the adapter switched off), lets
TRL's collator pad fixed token ids, and calls TRL's compute_loss; our preference_loss / grpo
functions get the same sequences. TRL computes its reference log-probabilities itself (adapter
off, no precompute); ours come from a plain log_softmax of the model with the adapter off.
Losses and the gradients of every trainable parameter agree within RTOL / ATOL in float32.

- dpo (sigmoid, hinge, ipo): trl.DPOTrainer.compute_loss on its DataCollatorForPreference batch;
  also full fine-tuning (the lm head trainable: the recomputing backward of _HeadLogProb).
- orpo: trl.experimental.orpo.ORPOTrainer.compute_loss; simpo: CPOTrainer(loss_type="simpo",
  cpo_alpha=0).compute_loss; both on DPODataCollatorWithPadding's batch.
- kto: trl.KTOTrainer.compute_loss (its KL completions = ours, the collator's KL_ rows).
- grpo: trl.GRPOTrainer._generate_and_score_completions samples and scores; its advantages
  (scale_rewards="group") must equal group_advantages of the same rewards, and its _compute_loss
  (loss_type "dapo", num_iterations 1) must equal grpo_token_loss on policy_logps, with beta 0
  and beta > 0 (the k3 KL to the adapter-off model), at temperature 1 and 0.7.
- token_logps / sequence_logps (frozen head, trainable head, Gemma soft-capping, small chunks)
  against the model's own forward (`plain=True`) and a plain log_softmax, values and gradients.

Run as:
    pytest -q tests/test_objectives.py
"""

from __future__ import annotations

import datasets
import pytest
import torch

from helpers import make_tiny_model, make_tiny_tokenizer
from smolora.config import TrainSection
from smolora.train.grpo import _base_logps, group_advantages, grpo_token_loss, policy_logps
from smolora.train.preference import PreferenceCollator, add_reference_logps, preference_loss

RTOL, ATOL = 1e-4, 1e-6  # float32 throughout; the chunked head and TRL's kernel sum in different orders
IGNORE = -100
# (prompt, chosen, rejected) token ids of different lengths; 2 is <|im_end|> (eos and pad).
PAIRS = [
    ([1, 40, 41, 42, 43], [50, 51, 52, 2], [60, 2]),
    ([1, 44, 45], [53, 54, 2], [61, 62, 63, 64, 65, 2]),
    ([1, 46, 47, 48, 49, 70, 71], [55, 2], [66, 67, 2]),
]
TEXT = datasets.Dataset.from_list([{"prompt": "What is 1?", "chosen": " 2", "rejected": " 3"}] * 4)


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def lora_config():
    from peft import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)


def randomise(model):
    """B = 0 would make the policy its reference (the adapter switched off): randomise it."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.train()
    return model


def lora_model(vocab: int, arch: str = "llama"):
    from peft import get_peft_model

    return randomise(get_peft_model(make_tiny_model(vocab, arch), lora_config()))


def trl_trainer(cls, tok, args, data, **kwargs):
    """TRL's trainer around a new adapter (TRL adds it: its reference is the adapter switched off)."""
    model = make_tiny_model(len(tok))
    trainer = cls(
        model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora_config(), **kwargs
    )
    randomise(trainer.model)
    return trainer, trainer.model


def common(out):
    # bf16 is TRL's default, on CPU too (autocast in GRPO's log-probabilities): float32 here, like ours.
    return dict(
        output_dir=str(out),
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
    )


def plain_logps(model, ids, mask, labels, temperature: float = 1.0):
    """Per-row summed log-probabilities of the labelled tokens: the model's logits, log_softmax, no grad."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / temperature
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(2, targets.clamp(min=0)[..., None]).squeeze(2)
    return (logp * (targets != IGNORE)).sum(1)


def reference(model, batch):
    with model.disable_adapter():
        return plain_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def grads_of(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(model, ours, theirs):
    """Our loss and gradients equal TRL's (and there is a gradient to compare)."""
    a, ga = grads_of(model, ours)
    b, gb = grads_of(model, theirs)
    torch.testing.assert_close(a, b.to(a), rtol=RTOL, atol=ATOL)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for name in ga:
        # plus 1e-5 of the gradient's largest element: a 2-core AMD EPYC's kernels put a trainable
        # head's gradients 1.9e-6 apart between the two summation orders
        atol = max(ATOL, 1e-5 * float(gb[name].abs().max()))
        torch.testing.assert_close(
            ga[name], gb[name], rtol=RTOL, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )
    assert max(g.abs().max() for g in ga.values()) > 1e-4
    return a.item()


def check(model, ours, t, theirs) -> float:
    """assert_same for preference_loss on our batch `ours` under settings `t`, against TRL's `theirs`."""
    return assert_same(model, lambda: preference_loss(model, ours, t, chunk=5)[0], theirs)


PAIR_ROWS = [  # data/preference.py's pairs rows of PAIRS, and TRL's DPO examples of the same ids
    {
        "chosen_input_ids": p + c,
        "chosen_labels": [IGNORE] * len(p) + c,
        "rejected_input_ids": p + r,
        "rejected_labels": [IGNORE] * len(p) + r,
    }
    for p, c, r in PAIRS
]
DPO_EXAMPLES = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in PAIRS]


def our_pairs(pad_id):
    return PreferenceCollator(pad_id, "pairs")(PAIR_ROWS)


def split_refs(batch, refs):
    batch["ref_chosen"], batch["ref_rejected"] = refs.chunk(2)
    return batch


# --- DPO -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo(tok, tmp_path_factory):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common(tmp_path_factory.mktemp("dpo")), per_device_train_batch_size=3, beta=0.1)
    return trl_trainer(DPOTrainer, tok, args, TEXT)[0]


def test_our_pairs_batch_is_trls(dpo, tok):
    theirs, ours = dpo.data_collator(DPO_EXAMPLES), our_pairs(tok.pad_token_id)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert torch.equal(
        ours["labels"], theirs["input_ids"].masked_fill(theirs["completion_mask"] == 0, IGNORE)
    )


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("hinge", 0.1), ("ipo", 0.5)])
def test_dpo_matches_trl(dpo, tok, loss_type, beta):
    model = dpo.model
    dpo.loss_types, dpo.loss_weights, dpo.beta = [loss_type], [1.0], beta
    theirs = dpo.data_collator(DPO_EXAMPLES)
    ours = split_refs(our_pairs(tok.pad_token_id), reference(model, our_pairs(tok.pad_token_id)))
    t = TrainSection(objective="dpo", loss_type=loss_type, beta=beta)
    assert check(model, ours, t, lambda: dpo.compute_loss(model, theirs)) > 0


def test_dpo_with_an_sft_term_matches_trls_sigmoid_plus_sft(dpo, tok):
    """train.sft_weight = TRL's loss_type [sigmoid, sft] with loss_weights [1, w] (RPO)."""
    model = dpo.model
    dpo.loss_types, dpo.loss_weights, dpo.beta = ["sigmoid", "sft"], [1.0, 0.7], 0.1
    try:
        theirs = dpo.data_collator(DPO_EXAMPLES)
        ours = split_refs(our_pairs(tok.pad_token_id), reference(model, our_pairs(tok.pad_token_id)))
        t = TrainSection(objective="dpo", beta=0.1, sft_weight=0.7)
        assert check(model, ours, t, lambda: dpo.compute_loss(model, theirs)) > 0.6931 * 0.99
    finally:
        dpo.loss_types, dpo.loss_weights = ["sigmoid"], [1.0]


def test_dpo_reference_logps_are_trls(dpo, tok):
    """add_reference_logps (run on the adapter-off model) = TRL's reference log-probabilities."""
    model, pairs = dpo.model, datasets.Dataset.from_list(PAIR_ROWS)
    with model.disable_adapter():
        ours = add_reference_logps(model, pairs, "pairs", tok.pad_token_id, batch_size=2, chunk=4)
    rc, rr = dpo.compute_ref_log_probs(model, dpo.data_collator(DPO_EXAMPLES))
    torch.testing.assert_close(torch.tensor(ours["ref_chosen"]), rc, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(torch.tensor(ours["ref_rejected"]), rr, rtol=RTOL, atol=ATOL)


def test_dpo_full_fine_tuning_matches_trl(tok, tiny_model_dir, tmp_path):
    """No adapter: every weight trains, the tied lm head too (the recomputing backward)."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common(tmp_path), per_device_train_batch_size=3, beta=0.1)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # TRL's reference: the same path
    trainer = DPOTrainer(model=policy, args=args, train_dataset=TEXT, processing_class=tok)
    model = trainer.model
    model.train()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # the reference copy is taken: move the policy away from it
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    ours = our_pairs(tok.pad_token_id)
    ours = split_refs(
        ours, plain_logps(trainer.ref_model, ours["input_ids"], ours["attention_mask"], ours["labels"])
    )
    theirs = trainer.data_collator(DPO_EXAMPLES)
    check(model, ours, TrainSection(objective="dpo", beta=0.1), lambda: trainer.compute_loss(model, theirs))


# --- ORPO and SimPO (TRL's experimental ORPOTrainer and CPOTrainer) ----------------------------


def trl_pairs_batch(trainer):
    features = [
        {
            "prompt_input_ids": p,
            "prompt_attention_mask": [1] * len(p),
            "chosen_input_ids": p + c,
            "chosen_attention_mask": [1] * (len(p) + len(c)),
            "chosen_labels": [IGNORE] * len(p) + c,
            "rejected_input_ids": p + r,
            "rejected_attention_mask": [1] * (len(p) + len(r)),
            "rejected_labels": [IGNORE] * len(p) + r,
        }
        for p, c, r in PAIRS
    ]
    return trainer.data_collator(features)


@pytest.mark.parametrize("objective", ["orpo", "simpo", "simpo+sft"])
def test_orpo_and_simpo_match_trl(tok, tmp_path, objective):
    if objective == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        settings, t = {"beta": 0.1}, TrainSection(objective="orpo")
    else:
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer

        alpha = 0.5 if objective == "simpo+sft" else 0.0  # train.sft_weight is CPO's cpo_alpha
        settings = {"loss_type": "simpo", "cpo_alpha": alpha, "beta": 2.0, "simpo_gamma": 0.5}
        t = TrainSection(objective="simpo", simpo_gamma=0.5, sft_weight=alpha)
        assert t.strength == 2.0
    args = Config(**common(tmp_path), per_device_train_batch_size=3, max_length=64, **settings)
    trainer, model = trl_trainer(Trainer, tok, args, TEXT)
    theirs, ours = trl_pairs_batch(trainer), our_pairs(tok.pad_token_id)
    check(model, ours, t, lambda: trainer.compute_loss(model, theirs))


# --- KTO -------------------------------------------------------------------------------------


def test_kto_matches_trl(tok, tmp_path):
    from trl import KTOConfig, KTOTrainer

    text = datasets.Dataset.from_list(
        [{"prompt": "What is 1?", "completion": " 2", "label": i % 2 == 0} for i in range(4)]
    )
    args = KTOConfig(**common(tmp_path), per_device_train_batch_size=4, beta=0.1)
    trainer, model = trl_trainer(KTOTrainer, tok, args, text)
    answers = [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS[:1]]
    prompts = [p for p, _, _ in PAIRS] + [PAIRS[1][0]]
    mismatched = answers[-1:] + answers[:-1]  # TRL's rotation: prompt i with answer i - 1
    labels = [True, False, True, False]
    theirs = trainer.data_collator(
        [
            {"prompt_ids": p, "completion_ids": a, "KL_completion_ids": m, "label": lab}
            for p, a, m, lab in zip(prompts, answers, mismatched, labels, strict=True)
        ]
    )
    rows = [
        {
            "input_ids": p + a,
            "labels": [IGNORE] * len(p) + a,
            "kl_input_ids": p + m,
            "kl_labels": [IGNORE] * len(p) + m,
            "label": int(lab),
        }
        for p, a, m, lab in zip(prompts, answers, mismatched, labels, strict=True)
    ]
    ours = PreferenceCollator(tok.pad_token_id, "kto")(rows)
    ours["ref_logp"], ours["ref_kl"] = reference(model, ours).chunk(2)
    t = TrainSection(objective="kto", beta=0.1)
    assert 0 < check(model, ours, t, lambda: trainer.compute_loss(model, theirs)) < 1


# --- GRPO ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_grpo_advantages_and_loss_match_trl(tok, tmp_path, temperature):
    from trl import GRPOConfig, GRPOTrainer

    seen: list[float] = []

    def chars(prompts, completions, **kwargs):  # varies with the sampled length: a non-zero group std
        scores = [float(len(c)) + 0.5 * (i % 3) for i, c in enumerate(completions)]
        seen.extend(scores)
        return scores

    n, prompts = 4, ["What is 3 plus one?", "Name a river."]
    args = GRPOConfig(
        **common(tmp_path),
        per_device_train_batch_size=8,
        num_generations=n,
        max_completion_length=6,
        temperature=temperature,
        beta=0.04,
        loss_type="dapo",
        scale_rewards="group",
        seed=0,
    )
    text = datasets.Dataset.from_list([{"prompt": p} for p in prompts])
    trainer, model = trl_trainer(GRPOTrainer, tok, args, text, reward_funcs=chars)
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([{"prompt": p} for p in prompts for _ in range(n)])
    ids, mask, comp, cmask = (
        out["prompt_ids"],
        out["prompt_mask"],
        out["completion_ids"],
        out["completion_mask"],
    )
    torch.testing.assert_close(
        group_advantages(torch.tensor(seen), n), out["advantages"], rtol=RTOL, atol=ATOL
    )
    ref = _base_logps(model, ids, mask, comp, cmask, 5, temperature)
    torch.testing.assert_close(ref, out["ref_per_token_logps"] * cmask, rtol=RTOL, atol=ATOL)
    for beta in (0.0, 0.04):
        trainer.beta = beta

        def ours(beta=beta):
            logp = policy_logps(model, ids, mask, comp, cmask, 5, temperature=temperature)
            return grpo_token_loss(logp, out["advantages"], cmask.float(), beta, ref)

        assert_same(model, ours, lambda: trainer._compute_loss(model, out))


# --- token_logps / sequence_logps against the plain forward ------------------------------------


@pytest.mark.parametrize(
    "arch,adapter", [("llama", True), ("llama", False), ("gemma3", True), ("gemma3", False)]
)
def test_sequence_logps_match_the_plain_forward(tok, arch, adapter):
    """Frozen head (adapter) and trainable head (full), Gemma's soft-capping, chunks smaller than a row."""
    from smolora.model.loss import sequence_logps, token_logps

    model = lora_model(len(tok), arch) if adapter else make_tiny_model(len(tok), arch)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 3.0  # small: the cap bends these logits
    model.train()
    batch = our_pairs(tok.pad_token_id)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    weights = torch.linspace(-1.0, 2.0, int((labels[:, 1:] != IGNORE).sum()))  # per-token weights in backward

    def run(plain, temperature=1.0):
        logp, rows = token_logps(model, ids, mask, labels, chunk=3, plain=plain, temperature=temperature)
        total, n = sequence_logps(model, ids, mask, labels, chunk=3, plain=plain, temperature=temperature)
        return logp, rows, total, n

    for temperature in (1.0, 0.7):
        fused, plain = run(False, temperature), run(True, temperature)
        for a, b in zip(fused, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(
            fused[2].detach(), plain_logps(model, ids, mask, labels, temperature), rtol=RTOL, atol=ATOL
        )
        assert torch.equal(fused[3], (labels[:, 1:] != IGNORE).sum(1).float())

        def loss(plain_path, t=temperature):
            logp, _, total, _ = run(plain_path, t)
            return (logp * weights).sum() + (total * torch.tensor([0.5, -1.0, 2.0] * 2)).sum()

        assert_same(model, lambda: loss(False), lambda: loss(True))
