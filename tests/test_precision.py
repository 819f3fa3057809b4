"""model.dtype auto per detected hardware (flags injected), and bf16 training close to float32."""

import torch

from smolora.model.precision import choose_dtype, cpu_bf16, cpu_flags


def test_choice_per_flag_set():
    assert choose_dtype("auto", "cpu", flags={"avx2", "fma"}, training=True)[0] == torch.float32
    dtype, reason = choose_dtype("auto", "cpu", flags={"avx512f", "avx512_bf16", "amx_bf16"}, training=True)
    assert dtype == torch.bfloat16 and "avx512_bf16, amx_bf16" in reason  # LoRA training: bf16 base
    dtype, reason = choose_dtype("auto", "cpu", flags={"avx512_bf16"})
    assert dtype == torch.float32 and "inference" in reason  # decoding in bf16: not measured to pay
    assert choose_dtype("bfloat16", "cpu", flags=set())[0] == torch.bfloat16
    assert choose_dtype("auto", "cuda", cuda_bf16=True)[0] == torch.bfloat16
    assert choose_dtype("auto", "cuda", cuda_bf16=False)[0] == torch.float32
    assert cpu_bf16({"amx_bf16"}) == ["amx_bf16"] and cpu_bf16(set()) == []


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_bf16(cpu_flags(info)) == ["avx512_bf16"]
    assert cpu_flags(tmp_path / "missing") == set()


def test_bf16_step_close_to_float32():
    """One LoRA step of a tiny Llama, base stored in bf16 (LoRA float32): loss within 2% of float32."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from helpers import arch_config

    torch.manual_seed(0)
    cfg = arch_config("llama")
    base = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 300, (2, 16))
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(1)
        copy = LlamaForCausalLM(cfg)
        copy.load_state_dict(base.state_dict())
        model = get_peft_model(copy.to(dtype).eval(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        lora = [p for p in model.parameters() if p.requires_grad]
        assert all(p.dtype == torch.float32 for p in lora)  # LoRA and its optimizer state stay float32
        loss = model(input_ids=ids, labels=ids).loss.float()
        loss.backward()
        losses[dtype] = float(loss)
    assert abs(losses[torch.bfloat16] - losses[torch.float32]) / losses[torch.float32] < 0.02


def test_doctor_shows_cpu_bf16_and_auto_choice():
    from smolora import doctor

    detail = doctor.check_device()["detail"]
    if not torch.cuda.is_available():
        train = "bfloat16" if cpu_bf16() else "float32"
        assert (
            f"model.dtype auto -> {train} for LoRA training" in detail and "float32 for inference" in detail
        )
        assert (", ".join(cpu_bf16()) or "no native bf16") in detail
