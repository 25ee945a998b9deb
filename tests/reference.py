"""References the tests compare against: eager attention with output_attentions=True, and the exact
inputs a model hands its language model."""
import inspect

import torch


def eager_attentions(vlm, batch):
    """Per-layer full attention maps, list of [B, H, L, L], from an eager forward of the same model."""
    vlm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return vlm.model(**batch.model_inputs, output_attentions=True).attentions
    finally:
        vlm.model.set_attn_implementation("sdpa")


def assert_rows_equal_eager(vlm, batch, rec, atol=1e-5):
    """Every recorded head-mean text->image and text->text row equals the eager row."""
    ref = eager_attentions(vlm, batch)
    for b, lay in enumerate(batch.layouts):
        assert rec[b].text_to_image.shape == (len(rec.layers), lay.n_text, lay.n_image_tokens)
        assert rec[b].text_to_text.shape == (len(rec.layers), lay.n_text, lay.n_text)
        for i, layer in enumerate(rec.layers):
            rows = ref[layer][b].mean(0)[lay.text_positions]
            torch.testing.assert_close(rec[b].text_to_image[i], rows[:, lay.image_positions], atol=atol, rtol=0)
            torch.testing.assert_close(rec[b].text_to_text[i], rows[:, lay.text_positions], atol=atol, rtol=0)


def lm_inputs(vlm, batch):
    """The language model, and inputs_embeds and position ids exactly as the model hands them to it."""
    embeds, pos = vlm.language_model_inputs(batch)
    return vlm.adapter.language_model(vlm.model), embeds.clone(), pos.clone()


def rotary(lm, h, pos, layer: int):
    """(cos, sin) of `layer`: layers of different types have their own rotary tables (Gemma 3)."""
    types = getattr(lm.config, "layer_types", None)
    if "layer_type" in inspect.signature(lm.rotary_emb.forward).parameters and types:
        return lm.rotary_emb(h, position_ids=pos, layer_type=types[layer])
    return lm.rotary_emb(h, position_ids=pos)


def deepstack_features(vlm, batch) -> list:
    """Qwen3-VL: the DeepStack features [N, D] the model adds after each of its first decoder layers at
    the image positions (sequence order), caught from its language-model call; [] for other families."""
    lm, seen = vlm.adapter.language_model(vlm.model), {}

    def catch(module, args, kwargs):
        seen.update(kwargs)

    handle = lm.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.model(**batch.model_inputs)
    finally:
        handle.remove()
    return list(seen.get("deepstack_visual_embeds") or [])


def prefill_mask(vlm, batch, idx=None):
    """Additive [1, 1, n, n] mask of sample 0's prefill over the tokens `idx` (default: all), built by
    hand from the model's rule: causal, or for Gemma 3 causal OR "same image" (its token_type_ids
    runs); None for causal families (layers then run causal SDPA without a mask)."""
    types = batch.model_inputs.get("token_type_ids")
    if types is None or not vlm.adapter.bidirectional_images:
        return None
    is_image = types[0] == 1
    run = torch.cumsum(is_image & ~torch.cat([torch.zeros(1, dtype=torch.bool), is_image[:-1]]), 0)
    block = torch.where(is_image, run, 0)
    idx = torch.arange(len(block)) if idx is None else idx
    block = block[idx]
    allowed = torch.ones(len(idx), len(idx), dtype=torch.bool).tril() | ((block[:, None] == block[None]) & (block[:, None] > 0))
    return torch.zeros(len(idx), len(idx)).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


def tiny_clip(vlm, context: int = 6):
    """A CLIP whose vision model is `vlm`'s tower (as LLaVA's tower comes from its CLIP) and a small
    random text encoder over `vlm`'s tokenizer with a `context`-token window (short, so that the
    question is cut into several chunks as the authors' code does beyond 77 tokens)."""
    import transformers

    from vtanalysis.analysis.grounding import HFClip

    tok = vlm.processor.tokenizer
    text = transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, max_position_embeddings=context, projection_dim=24,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                       pad_token_id=tok.pad_token_id)
    torch.manual_seed(5)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text.to_dict(),
                                                          vision_config=vlm.config.vision_config.to_dict(),
                                                          projection_dim=24))
    clip.vision_model.load_state_dict(vlm.model.model.vision_tower.state_dict())
    processor = transformers.CLIPProcessor(image_processor=vlm.processor.image_processor, tokenizer=tok)
    return HFClip(clip.eval(), processor, text_suffix=" </s>")


class DiesOnCall:
    """Stands in for `real`; its `die_on`-th call raises KeyboardInterrupt (a run killed mid-way).
    `calls` counts every call; set `die_on = None` to let every later call through."""

    def __init__(self, real, die_on: int):
        self.real, self.die_on, self.calls = real, die_on, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.die_on:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


class NoWait:
    """A stand-in for accelerate's state in `Processes(rank, world, NoWait())`: the test plays the
    processes one after another, so waiting for the others is a no-op."""

    def wait_for_everyone(self):
        pass


def run_cli(*args: str, processes: int = 1):
    """`python -m vtanalysis ARGS`, or under `accelerate launch` with `processes` CPU processes
    (--multi_gpu is accelerate's torchrun-style launcher; without GPUs they talk over gloo).
    Returns the finished process; fails the test with its output when it exits non-zero."""
    import subprocess
    import sys

    launch = [] if processes == 1 else [
        "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--multi_gpu", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = subprocess.run([sys.executable, *launch, "-m", "vtanalysis", *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
