"""`harmony convert quantize`: release quantization of an HF export with NVIDIA Model Optimizer.

FP8 (E4M3 weights and activations, per-tensor scales) is calibrated on a few prompts, then exported
as a unified HF checkpoint (safetensors + `hf_quant_config.json`) that vLLM serves with
`quantization="modelopt"`. Calibration runs the model on the GPU when there is one (bf16), else on
the CPU (fp32; the toy model in tests). Needs nvidia-modelopt (the `gpu` extra: 0.47.0; `cpu`: 0.42.0).
"""

from __future__ import annotations

from pathlib import Path

import torch

from harmony_mcore.bridge.files import ConversionError, atomic_output, hf_dtype_kwargs, read_hf_config

# Default calibration set (--calib-file replaces it): FP8 max calibration needs activation ranges
# representative of use; a few hundred in-domain prompts are better for a release.
CALIBRATION_TEXT = (
    "Let x be a real number such that 3x + 7 = 22. What is x? Subtract 7 from both sides to get 3x = 15, so x = 5.",
    "A rectangle has perimeter 30 and one side of length 6. Its area is 6 * 9 = 54.",
    "Compute the sum of the first 100 positive integers. Using n(n+1)/2 we get 5050. \\boxed{5050}",
    "Find all integer solutions of x^2 - 5x + 6 = 0. Factoring gives (x-2)(x-3) = 0, so x = 2 or x = 3.",
    "The probability of rolling two sixes with two fair dice is 1/36.",
    "If f(x) = 2x^2 - 3, then f(4) = 29 and f(-1) = -1.",
)
FORMATS = {"fp8": "FP8_DEFAULT_CFG"}


def quantize(hf_dir: str | Path, out: str | Path, *, fmt: str = "fp8", calib_file: str | Path | None = None,
             overwrite: bool = False, log=print) -> None:
    hf_dir, out = Path(hf_dir), Path(out)
    read_hf_config(hf_dir)
    texts = list(CALIBRATION_TEXT)
    if calib_file:
        texts = [line for line in Path(calib_file).read_text().splitlines() if line.strip()]
        if not texts:
            raise ConversionError(f"--calib-file {calib_file}: no non-empty lines")
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint
    except ImportError:
        raise ConversionError("nvidia-modelopt is not installed: pip install -e '.[gpu]' on a GPU node, "
                              "-e '.[cpu]' on a CPU machine") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    from harmony_mcore import device

    dtype = torch.bfloat16 if device.on_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(hf_dir, **hf_dtype_kwargs(dtype)).to(device.current()).eval()

    def forward_loop(m):
        with torch.no_grad():
            for text in texts:
                m(**tok(text, return_tensors="pt").to(model.device))

    mtq.quantize(model, getattr(mtq, FORMATS[fmt]), forward_loop)
    with atomic_output(out, overwrite, [hf_dir]) as tmp:
        export_hf_checkpoint(model, export_dir=tmp)
        tok.save_pretrained(tmp)
    log(f"wrote {fmt} checkpoint {out} (serve with vLLM: quantization='modelopt')")
