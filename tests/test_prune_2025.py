"""Issue 22: the 2025 baselines on the engine - DivPrune, SCOPE, DART and spatially uniform selection.

Each authors' rule is checked against a straight transcription of the authors' function on the
inputs the model really produces (DivPrune: the projector outputs the language model receives;
SCOPE: the vision tower's feature-layer patch states and its eager [CLS] attention; DART: layer K-1's
keys after RoPE and the final-normed states entering layer K, recomputed by hand), and each
method keeps exactly its budget on every family.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import QUESTIONS
from reference import tiny_clip
from vtanalysis import prune
from vtanalysis.prune.vision import vision_refusal
from vtanalysis.models import tiny
from vtanalysis.prune.methods import divprune, scope, vispruner
from vtanalysis.prune.methods.baselines import lattice
from vtanalysis.prune.run import _crop_budgets
from vtanalysis.prune.vision import crop_columns


@pytest.fixture(scope="module")
def llava():
    return tiny.build("llava", seed=2, num_layers=4)


def authors_divprune(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """vbdi/divprune, `LLaVA/llava/model/llava_arch.py`, `DivPrune`, transcribed: D = 1 - cosine;
    first pick = argmax over columns of the second-smallest entry; then argmax of the minimum
    distance to the picked set; int(round(ratio * N)) picks, sorted."""
    xn = x / x.norm(dim=-1, keepdim=True)
    dist = 1 - xn @ xn.T
    k = int(round(ratio * x.shape[0]))
    picked = [int(torch.sort(dist, dim=0).values[1].argmax())]
    for _ in range(1, k):
        nearest = dist[picked].min(dim=0).values
        picked.append(int(nearest.argmax()))
    return torch.tensor(sorted(picked))


def authors_scope(features: torch.Tensor, cls_attention: torch.Tensor, k: int, alpha: float = 1.0) -> torch.Tensor:
    """kinredon/SCOPE, `scope/clip_encoder.py`, `SCOPE`, transcribed: S = cosine of the patch features;
    m = 0; each step scores candidate c by sum_r max(0, S[r, c] - m_r) x saliency_c^alpha (saliency:
    [CLS] attention summed over heads), takes the argmax among unpicked tokens, m = max(m, S[c])."""
    f = F.normalize(features, dim=-1)
    sim = f @ f.T
    m = torch.zeros(len(f))
    chosen = []
    for _ in range(k):
        gain = torch.clamp(sim - m[:, None], min=0).sum(0) * cls_attention ** alpha
        gain[chosen] = float("-inf")
        c = int(gain.argmax())
        chosen.append(c)
        m = torch.maximum(m, sim[c])
    return torch.tensor(sorted(chosen))


@torch.no_grad()
def eager_tower(vlm, batch):
    """The vision tower's eager attentions and hidden states (the authors read them this way)."""
    vlm.model.set_attn_implementation("eager")
    try:
        return vlm.model.model.vision_tower(batch.model_inputs["pixel_values"], output_attentions=True,
                                            output_hidden_states=True)
    finally:
        vlm.model.set_attn_implementation("sdpa")


@torch.no_grad()
def projected(vlm, batch) -> torch.Tensor:
    """[n_image, D] the projector outputs the LLM receives for the first sample (LLaVA-1.5 order)."""
    feats = vlm.model.model.get_image_features(pixel_values=batch.model_inputs["pixel_values"],
                                               vision_feature_layer=vlm.config.vision_feature_layer,
                                               vision_feature_select_strategy="default")
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    return (feats[0] if isinstance(feats, (list, tuple)) else feats[0]).float()


@pytest.mark.parametrize("keep", [0.098, 0.25])
def test_divprune_equals_the_authors_greedy_on_the_projector_outputs(llava, images, keep):
    batch = llava.prepare(images[:1], QUESTIONS[:1])
    x = projected(llava, batch)
    assert x.shape[0] == batch.layouts[0].n_image_tokens
    want = authors_divprune(x, keep)
    kept = prune.select(llava, batch, "divprune", keep)[-1][0]
    assert torch.equal(kept.sort().values.cpu(), want)
    fastv = prune.select(llava, batch, "fastv", keep)[-1][0]
    assert not torch.equal(fastv.sort().values.cpu(), want)  # a different rule picks differently


@pytest.mark.parametrize("keep", [6, 16])
def test_scope_equals_the_authors_greedy(llava, images, keep):
    batch = llava.prepare(images[1:2], QUESTIONS[1:2])
    out = eager_tower(llava, batch)
    layer = llava.config.vision_feature_layer
    features = out.hidden_states[layer][0, 1:].float()
    saliency = out.attentions[layer][0, :, 0, 1:].sum(0).float()  # summed over heads, as the authors
    want = authors_scope(features, saliency, keep)
    kept = prune.select(llava, batch, "scope", keep)[-1][0]
    assert torch.equal(kept.sort().values.cpu(), want)
    plain = authors_scope(features, torch.ones_like(saliency), keep)  # coverage alone picks differently
    assert not torch.equal(plain, want)


def test_greedy_picks_are_distinct_even_for_duplicate_tokens():
    """The authors' float16 DivPrune can pick an exact duplicate twice; ours never repeats a token."""
    x = torch.randn(10, 8)
    x[5] = x[3]
    picks = divprune.divprune(x, 10)
    assert sorted(picks.tolist()) == list(range(10))
    assert sorted(scope.scope(x, torch.rand(10), 10).tolist()) == list(range(10))


def test_uniform_lattice_spreads_evenly_in_2d():
    """64 of a 24 x 24 grid: the 8 x 8 product of rows and columns 3 apart (every third token in
    2-D, not every ninth in raster order); any budget gets exactly its count of distinct tokens."""
    idx = lattice(24, 24, 64, "cpu")[0]
    rows, cols = (idx // 24).unique(), (idx % 24).unique()
    assert len(idx.unique()) == 64 and len(rows) == len(cols) == 8
    assert rows.diff().tolist() == [3] * 7 and cols.diff().tolist() == [3] * 7
    assert set(idx.tolist()) == {int(r) * 24 + int(c) for r in rows for c in cols}
    for h, w, k in [(5, 7, 13), (24, 24, 576), (3, 3, 1), (12, 12, 14), (4, 12, 5)]:
        assert len(set(lattice(h, w, k, "cpu")[0].tolist())) == k


@pytest.mark.parametrize("family", ["llava", "llava-next", "qwen2-vl"])
@pytest.mark.parametrize("method", ["divprune", "scope", "uniform", "dart", "vispruner", "pool", "cdpruner"])
def test_budgets_on_every_family(images, family, method):
    """Kept counts equal the engine's budget on every family, batch of three with padding."""
    vlm = tiny.build(family, seed=1, num_layers=4)
    if vision_refusal(vlm, prune.get(method).needs) is not None:
        pytest.skip("no vision [CLS] token in this family")
    knobs = {"positions": "original"} if vlm.adapter.mrope else {}
    if method == "cdpruner":
        knobs["clip"] = tiny_clip(vlm)
    batch = vlm.prepare(images, QUESTIONS)
    res = prune.run(vlm, batch, method, 0.25, max_new_tokens=2, **knobs)
    if prune.get(method).where == "pre":
        crops = crop_columns(vlm, batch)
        want = [sum(_crop_budgets(vlm, prune.get(method), 0.25, {}, c)) + len(lay.newline_columns)
                for c, lay in zip(crops, batch.layouts)]  # per crop, in the method's rounding, + newlines
    else:
        want = [round(0.25 * lay.n_image_tokens) for lay in batch.layouts]
    assert res.kept_counts == [want]
    for b in range(len(batch)):
        assert len(set(res.kept[0][b].tolist())) == len(res.kept[0][b]) == res.kept_counts[0][b]


def authors_dart(keys, states, image, after, keep, image_pivots=4, text_pivots=4):
    """DART's `get_retained_image_token` (ZichenWen1/DART via Chenfei-Liao/VTC-Bench `external/DART`,
    `modeling_llama_self.py`), transcribed on absolute positions: pivots = top key-L1-norm image
    tokens and text tokens after the image; per pivot, the least cosine-similar image tokens among
    those left; image pivots kept. Two documented deviations are applied (`prune.dart`): pivots are
    visited image first then text, by descending norm (not CPython set order), and the picks are
    split so that exactly `keep` tokens remain."""
    norm = keys.abs().sum(-1)
    img_piv = [image[i] for i in torch.topk(norm[image], image_pivots).indices.tolist()]
    txt_piv = [after[i] for i in torch.topk(norm[after], text_pivots).indices.tolist()]
    pivots, rest = img_piv + txt_piv, keep - image_pivots
    per = [rest // len(pivots) + (i < rest % len(pivots)) for i in range(len(pivots))]
    pool = [p for p in image.tolist() if p not in img_piv]
    kept = list(img_piv)
    for p, t in zip(pivots, per):
        sims = torch.stack([F.cosine_similarity(states[p], states[q], dim=0) for q in pool])
        take = [pool[i] for i in torch.topk(-sims, t).indices.tolist()]
        kept += take
        pool = [q for q in pool if q not in take]
    return sorted(kept)


@pytest.mark.parametrize("keep", [12, 30])
def test_dart_equals_the_authors_pivots_and_duplicates(llava, images, keep):
    """Keys of layer K-1 after RoPE and the final-normed states entering layer K, recomputed by hand
    from an unpruned forward's hidden states."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    batch = llava.prepare(images[:1], QUESTIONS[:1])
    lay = batch.layouts[0]
    lm = llava.adapter.language_model(llava.model)
    with torch.no_grad():
        out = llava.model(**batch.model_inputs, output_hidden_states=True)
        k_layer = 2
        attn = llava.decoder_layers[k_layer - 1].self_attn
        x = llava.decoder_layers[k_layer - 1].input_layernorm(out.hidden_states[k_layer - 1])
        length = x.shape[1]
        keys = attn.k_proj(x).view(1, length, -1, attn.head_dim).transpose(1, 2)
        cos, sin = lm.rotary_emb(x, position_ids=torch.arange(length)[None])
        plain = keys[0].transpose(0, 1).flatten(1)
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
        keys = keys[0].transpose(0, 1).flatten(1)  # [L, H d], heads concatenated
        states = lm.norm(out.hidden_states[k_layer])[0]
    image = lay.image_positions.cpu()
    after = torch.arange(int(image.max()) + 1, length)
    want = authors_dart(keys, states, image, after, keep)
    kept = prune.select(llava, batch, "dart", keep)[-1][0]
    assert sorted(image[kept.cpu()].tolist()) == want
    assert len(want) == keep
    assert authors_dart(plain, states, image, after, keep) != want  # the pivots read keys after RoPE


def authors_vispruner(features, attention, k, ratio):
    """Theia-4869/VisPruner `encode_images`, transcribed (one crop): important = top int(k x ratio) by
    head-mean [CLS] attention; the residual in descending-attention order; while more than
    k - important remain: split alternately, drop the min(8, excess) a-tokens with the highest
    max-cosine to b, new order = surviving a by score (descending) then b."""
    t_imp = int(k * ratio)
    t_div = k - t_imp
    order = attention.argsort(descending=True, stable=True)
    important, residual = order[:t_imp], order[t_imp:]
    x = features / features.norm(dim=-1, keepdim=True)
    while t_div > 0:
        r = min(8, len(residual) - t_div)
        if r <= 0:
            break
        a, b = residual[::2], residual[1::2]
        scores = (x[a] @ x[b].T).max(dim=-1).values
        distinct = scores.argsort(descending=True, stable=True)[r:]
        residual = torch.cat([a[distinct], b])
    return torch.cat([important, residual]).sort().values if t_div > 0 else important.sort().values


@pytest.mark.parametrize("keep,ratio", [(32, 0.5), (16, 0.5), (24, 0.75)])
def test_vispruner_equals_the_authors_rounds(llava, images, keep, ratio):
    """On cases where the authors' code runs (even important count, at least 8 diverse tokens)."""
    batch = llava.prepare(images[1:2], QUESTIONS[1:2])
    out = eager_tower(llava, batch)
    layer = llava.config.vision_feature_layer
    want = authors_vispruner(out.hidden_states[layer][0, 1:].float(), out.attentions[layer][0, :, 0, 1:].mean(0),
                             keep, ratio)
    kept = prune.select(llava, batch, "vispruner", keep, important_ratio=ratio)[-1][0]
    assert torch.equal(kept.sort().values.cpu(), want)
    top = prune.select(llava, batch, "fastervlm", keep)[-1][0]
    assert not torch.equal(top.sort().values.cpu(), want)  # the diverse half is not more of the top


def test_vispruner_handles_the_budgets_the_authors_code_rejects():
    """Odd residuals and fewer than 8 diverse tokens: exactly k distinct tokens."""
    f, s = torch.randn(64, 16), torch.rand(64)
    for k, ratio in [(19, 0.3), (6, 0.5), (63, 0.5), (64, 0.5), (1, 0.0)]:
        picks = vispruner.vispruner(f, s, k, ratio)
        assert len(picks) == len(set(picks.tolist())) == k


@pytest.mark.parametrize("keep", [16, 9])
def test_pool_equals_block_means_on_the_shortened_sequence(llava, images, keep):
    """`pool` at keep 16 on the 8 x 8 grid: a 4 x 4 lattice, each kept token the mean of its 2 x 2
    block of input embeddings (at 9: 3 x 3 blocks of 3 or 2 rows / columns, as adaptive pooling
    bins them), the LLM on the shortened sequence with renumbered positions."""
    from test_prune_pre import short_sequence_logits

    from reference import lm_inputs

    batch = llava.prepare(images[:1], QUESTIONS[:1])
    lay = batch.layouts[0]
    (h, w) = lay.grids[0].shape
    _, embeds, _ = lm_inputs(llava, batch)
    grid = embeds[0, lay.image_positions].view(h, w, -1)
    r = c = int(keep ** 0.5)
    bins = [(i * h // r, -(-(i + 1) * h // r)) for i in range(r)]  # adaptive pooling's bin edges
    cols = [(j * w // c, -(-(j + 1) * w // c)) for j in range(c)]
    means = torch.stack([grid[a:b, d:e].mean((0, 1)) for a, b in bins for d, e in cols])
    kept_cols = torch.tensor([int((i + 0.5) * h / r) * w + int((j + 0.5) * w / c) for i in range(r) for j in range(c)])
    want = short_sequence_logits(llava, batch, means, kept_cols)
    res = prune.run(llava, batch, "pool", keep, max_new_tokens=1)
    assert torch.equal(res.kept[0][0].cpu(), kept_cols)
    torch.testing.assert_close(res.logits, want, atol=1e-5, rtol=0)
    uniform = prune.run(llava, batch, "uniform", keep, max_new_tokens=1)
    assert torch.equal(uniform.kept[0][0], res.kept[0][0])
    assert not torch.allclose(uniform.logits, res.logits, atol=1e-4)  # the pooling changed the input


@torch.no_grad()
def authors_cdpruner(vlm, clip, batch, question, keep):
    """Theia-4869/CDPruner `encode_images` on one LLaVA-1.5 image, transcribed: relevance = min-max of
    the negated mean cosine between visual_projection(post_layernorm(layer -2 patches)) and the
    question's text embeddings (77-token chunks here of `context`), +1e-6; S = cosine of the projector
    outputs; K = r S r; greedy MAP, here by its definition (argmax of log det K[S + {i}]), sorted."""
    model, tok = clip.model, clip.processor.tokenizer
    tower = vlm.model.model.vision_tower(batch.model_inputs["pixel_values"], output_hidden_states=True)
    patches = tower.hidden_states[vlm.config.vision_feature_layer][0, 1:]
    z = model.visual_projection(model.vision_model.post_layernorm(patches))
    ids = tok(question + " </s>", add_special_tokens=False, return_tensors="pt").input_ids[0]
    span = model.config.text_config.max_position_embeddings
    chunks = [ids[i:i + span] for i in range(0, len(ids), span)]
    mask = torch.stack([F.pad(torch.ones(len(c), dtype=torch.long), (0, span - len(c))) for c in chunks])
    ids = torch.stack([F.pad(c, (0, span - len(c))) for c in chunks])
    e = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    r = -(z / z.norm(dim=-1, keepdim=True) @ (e / e.norm(dim=-1, keepdim=True)).T).mean(-1)
    r = (r - r.min() + 1e-6) / (r.max() - r.min())
    x = projected(vlm, batch)
    x = x / x.norm(dim=-1, keepdim=True)
    kernel = r[:, None] * (x @ x.T) * r[None, :]
    chosen = []
    for _ in range(keep):
        gains = torch.full((len(r),), float("-inf"), dtype=torch.float64)
        for i in range(len(r)):
            if i not in chosen:
                sub = kernel[chosen + [i]][:, chosen + [i]].double()
                gains[i] = torch.logdet(sub)
        chosen.append(int(gains.argmax()))
    return torch.tensor(sorted(chosen))


@pytest.mark.parametrize("keep", [5, 12])
def test_cdpruner_equals_the_authors_conditional_dpp(llava, images, keep):
    clip = tiny_clip(llava)
    batch = llava.prepare(images[:1], QUESTIONS[:1])
    assert len(clip.tokenizer([QUESTIONS[0]])["input_ids"][0]) > 6  # the question spans several chunks
    want = authors_cdpruner(llava, clip, batch, QUESTIONS[0], keep)
    kept = prune.select(llava, batch, "cdpruner", keep, clip=clip)[-1][0]
    assert torch.equal(kept.sort().values.cpu(), want)
    other = prune.select(llava, llava.prepare(images[:1], ["is there a red circle ?"]), "cdpruner", keep, clip=clip)
    assert not torch.equal(other[-1][0].sort().values.cpu(), want)  # conditional: the question matters


def test_cdpruner_without_a_clip_names_what_to_pass(llava, images):
    from vtanalysis.errors import VTAError

    with pytest.raises(VTAError, match="clip="):
        prune.run(llava, llava.prepare(images[:1], QUESTIONS[:1]), "cdpruner", 0.25)


@pytest.mark.parametrize("family", ["llava", "llava-next"])
def test_cdpruner_keeps_the_engine_guarantees(images, family, monkeypatch):
    """Its knobs carry a model, so the shared parametrized tests cannot: keep-all through the engine
    path equals unpruned; the KV cache equals recomputation; a batch of three equals single runs."""
    import sys

    vlm = tiny.build(family, seed=1, num_layers=4)
    clip = tiny_clip(vlm)
    batch = vlm.prepare(images, QUESTIONS)
    cached = prune.run(vlm, batch, "cdpruner", 0.3, max_new_tokens=4, clip=clip)
    assert torch.equal(cached.token_ids, prune.run(vlm, batch, "cdpruner", 0.3, max_new_tokens=4, use_cache=False,
                                                   clip=clip).token_ids)
    for b in range(len(batch)):
        alone = prune.run(vlm, vlm.prepare(images[b:b + 1], QUESTIONS[b:b + 1]), "cdpruner", 0.3, max_new_tokens=4,
                          clip=clip)
        assert torch.equal(cached.kept[0][b], alone.kept[0][0])
        torch.testing.assert_close(cached.logits[b], alone.logits[0], atol=1e-4, rtol=0)
    base = prune.run(vlm, batch, "none", max_new_tokens=3)
    monkeypatch.setattr(sys.modules["vtanalysis.prune.run"], "keeps_everything", lambda keep, n: False)
    full = prune.run(vlm, batch, "cdpruner", 1.0, max_new_tokens=3, clip=clip)
    torch.testing.assert_close(full.logits, base.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-next"])
def test_downsample_feeds_a_smaller_image_within_the_budget(images, family):
    """The processor's own count of the downsampled image is at most keep of the full count; on
    Qwen2-VL (tokens follow the pixel count) also the largest such: 5 % larger exceeds it."""
    from PIL import Image

    from vtanalysis.prune.methods.downsample import image_tokens

    vlm = tiny.build(family, seed=1, num_layers=4)
    from vtanalysis.models.images import load_image

    big = load_image(images[0]).resize((224, 160))
    full = image_tokens(vlm, big)
    floor = image_tokens(vlm, big.resize((1, 1)))
    keep = max(0.5, (floor + 1) / full)
    small = prune.downsampled(vlm, [big], keep)[0]
    budget = prune.keep_count(keep, full)
    assert image_tokens(vlm, small) <= budget < full
    if family == "qwen2-vl":
        f = small.width / big.width * 1.05
        larger = big.resize((round(big.width * f), round(big.height * f)), Image.BICUBIC)
        assert image_tokens(vlm, larger) > budget


def test_downsample_refuses_fixed_resolution_and_processed_batches(llava, images):
    from vtanalysis.errors import VTAError

    with pytest.raises(VTAError, match="pool"):
        prune.downsampled(llava, images[:1], 0.25)
    qwen = tiny.build("qwen2-vl", seed=1, num_layers=4)
    with pytest.raises(VTAError, match="prune.downsampled"):
        prune.run(qwen, qwen.prepare(images[:1], QUESTIONS[:1]), "downsample", 0.25)


def test_evaluate_downsample_reports_the_full_size_flops(images, tmp_path):
    from vtanalysis.data import shapes
    from vtanalysis.data.dataset import read_samples
    from vtanalysis.evaluate import evaluate

    qwen = tiny.build("qwen2-vl", seed=1, num_layers=4)
    shapes.write_dataset(tmp_path, 2, seed=0, progress=False)
    samples = read_samples(tmp_path)[:3]
    r = evaluate(qwen, samples, method="downsample", keep=0.5, progress=False)
    assert 0 < r["flops_ratio"] < 1 and r["samples"] == 3


def test_eval_carries_the_baselines_at_the_same_keep(tmp_path):
    """Issue 22: `vtanalysis eval --method M` also runs random, uniform and pool at M's keep."""
    import json

    from typer.testing import CliRunner

    from vtanalysis.cli import app
    from vtanalysis.data import shapes

    shapes.write_dataset(tmp_path, 2, seed=0, progress=False)
    out = CliRunner().invoke(app, ["eval", "--model", "tiny-llava", "--data", str(tmp_path), "--samples", "4",
                                   "--method", "fastv", "--keep", "0.25", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert set(result["baselines"]) == {"random", "uniform", "pool"}
    assert all(r["keep"] == 0.25 and r["samples"] == 4 for r in result["baselines"].values())
