"""What the tests share (gemma's `gm/testing` way): paths, tolerance helpers, perturbed torch
references, the jitted FLUX forward, the diffusers -> BFL key table, and the analytic search
problem. Tests import from here, never from each other; fixtures live in conftest.py."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx

from vmdiff_jax.method import score
from vmdiff_jax.nn.flux import stack_layers
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method.search import Evaluation

# A copy of ../shared/manifests (every key and shape of the real checkpoints, see SOURCE.md),
# kept with the tests so that the full-size structure tests never depend on the checkout's neighbours.
MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"


def rel(ours, ref) -> float:
    """max |ours - ref| / max(1, max |ref|), after checking the shapes agree."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def perturbed(model, seed: int | None, scale: float = 0.1):
    """Every parameter of a torch model moved by N(0, scale^2) (reseeded with `seed` unless None),
    so that no zero / one init hides a mapping bug; the model in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def grid_ids(h: int, w: int) -> np.ndarray:
    """FLUX image position ids (h * w, 3): (0, row, column)."""
    ids = np.zeros((h, w, 3), np.float32)
    ids[..., 1] = np.arange(h)[:, None]
    ids[..., 2] = np.arange(w)[None, :]
    return ids.reshape(h * w, 3)


@jax.jit
def _forward(graphdef, state, inputs):
    return nnx.merge(graphdef, state)(**inputs)


def flux_forward(model, inputs: dict) -> np.ndarray:
    """One jitted call of a Flax FLUX model on keyword inputs (img, img_ids, txt, txt_ids,
    timesteps, y, guidance) -> numpy in the model's output dtype (eager op-by-op dispatch would
    compile every op)."""
    return np.asarray(_forward(*nnx.split(model), inputs))


def bfl_tensors(model, dtype=None) -> dict[str, np.ndarray]:
    """A Flax FLUX model's parameters under BFL's checkpoint names (kernel -> weight, transposed
    to torch's (out, in)), as numpy (cast to `dtype` when given). Stacked blocks
    (`double_blocks.img_attn.qkv.kernel` (depth, in, out)) are written as their layers
    (`double_blocks.{i}.img_attn.qkv.weight`), as an unrolled model's would be."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, a = ".".join(map(str, path)), np.asarray(var.get_value())
        head, _, rest = name.partition(".")
        layers = [(f"{head}.{i}.{rest}", a[i]) for i in range(len(a))] if head in model.layer_stacks else [(name, a)]
        for key, x in layers:
            if key.endswith(".kernel"):
                key, x = key[: -len("kernel")] + "weight", x.T
            out[key] = np.ascontiguousarray(x if dtype is None else x.astype(dtype))
    return out


def scanned(model):
    """The stacked-blocks Flux (scan_blocks=True) holding the weights of an unrolled one
    (scan_blocks=False), layer i of every stacked parameter at index i."""
    m = nnx.clone(model)
    m.double_blocks = stack_layers(list(m.double_blocks)) if len(m.double_blocks) else None
    m.single_blocks = stack_layers(list(m.single_blocks)) if len(m.single_blocks) else None
    m.scan_blocks = True
    return m


def to_bfl(sd, depth, single):
    """diffusers state dict -> BFL names (the inverse table, written independently of ours)."""
    out = {}

    def mv(new, old):
        out[f"{new}.weight"], out[f"{new}.bias"] = sd[f"{old}.weight"], sd[f"{old}.bias"]

    def fuse(new, olds):
        out[f"{new}.weight"] = torch.cat([sd[f"{o}.weight"] for o in olds], 0)
        out[f"{new}.bias"] = torch.cat([sd[f"{o}.bias"] for o in olds], 0)

    mv("img_in", "x_embedder")
    mv("txt_in", "context_embedder")
    embedders = [("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")]
    for bfl, d in embedders:
        if f"time_text_embed.{d}.linear_1.weight" in sd:
            mv(f"{bfl}.in_layer", f"time_text_embed.{d}.linear_1")
            mv(f"{bfl}.out_layer", f"time_text_embed.{d}.linear_2")
    for i in range(depth):
        b, t = f"double_blocks.{i}", f"transformer_blocks.{i}.attn"
        mv(f"{b}.img_mod.lin", f"transformer_blocks.{i}.norm1.linear")
        mv(f"{b}.txt_mod.lin", f"transformer_blocks.{i}.norm1_context.linear")
        fuse(f"{b}.img_attn.qkv", [f"{t}.to_q", f"{t}.to_k", f"{t}.to_v"])
        fuse(f"{b}.txt_attn.qkv", [f"{t}.add_q_proj", f"{t}.add_k_proj", f"{t}.add_v_proj"])
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{t}.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{t}.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{t}.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{t}.norm_added_k.weight"]
        mv(f"{b}.img_attn.proj", f"{t}.to_out.0")
        mv(f"{b}.txt_attn.proj", f"{t}.to_add_out")
        mv(f"{b}.img_mlp.0", f"transformer_blocks.{i}.ff.net.0.proj")
        mv(f"{b}.img_mlp.2", f"transformer_blocks.{i}.ff.net.2")
        mv(f"{b}.txt_mlp.0", f"transformer_blocks.{i}.ff_context.net.0.proj")
        mv(f"{b}.txt_mlp.2", f"transformer_blocks.{i}.ff_context.net.2")
    for i in range(single):
        b, t = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        fuse(f"{b}.linear1", [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v", f"{t}.proj_mlp"])
        mv(f"{b}.linear2", f"{t}.proj_out")
        mv(f"{b}.modulation.lin", f"{t}.norm.linear")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{t}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{t}.attn.norm_k.weight"]
    mv("final_layer.linear", "proj_out")
    for s in ("weight", "bias"):  # diffusers (scale, shift) -> BFL (shift, scale)
        scale, shift = sd[f"norm_out.linear.{s}"].chunk(2, 0)
        out[f"final_layer.adaLN_modulation.1.{s}"] = torch.cat([shift, scale], 0)
    return {k: v.contiguous() for k, v in out.items()}


class FakeProblem:
    """Analytic FusionProblem: S = peak[k] - A (alpha - a_star[k])^2 + G(beta of object `weak`).

    G(b) = gain (1 - ((b - b_star) / (1 - b_star))^2): 0 at b = 1, `gain` at b_star.
    Sub-scores are consistent with S: d_i, n_i = S/4 plus a non-negative offset (e_d, e_n)
    on the stronger side, so that similarity_score(d1, d2, n1, n2) == S and the weaker object
    (paper: smaller d_i + n_i) is `weak` when e_d, e_n >= 0.
    Counts the work it is asked to do, independently of the search's cost model.
    """

    def __init__(self, peaks=(2.5,), a_star=(0.5234,), A=40.0, weak=1, b_star=2.1, gain=0.0, e_d=0.05, e_n=0.10):
        self.peaks, self.a_star, self.A = peaks, a_star, A
        self.weak, self.b_star, self.gain = weak, b_star, gain
        self.e_d, self.e_n = e_d, e_n
        self.noise_rounds, self.blend_rows, self.mix_rows = [], 0, 0
        self.mix_batches = []

    def target(self, alpha, b1, b2, k):
        b = b1 if self.weak == 0 else b2
        g = self.gain * (1.0 - ((b - self.b_star) / (1.0 - self.b_star)) ** 2)
        return self.peaks[k - 1] - self.A * (alpha - self.a_star[k - 1]) ** 2 + g

    def noise(self, round_k):
        self.noise_rounds.append(round_k)
        return round_k

    def blend(self, eps, betas):
        betas = np.asarray(betas)
        assert betas.ndim == 2 and betas.shape[1] == 2
        self.blend_rows += len(betas)
        return np.array([[eps, b1, b2] for b1, b2 in betas])

    def mix(self, eps_b, alphas):
        """eps_b rows are (k, b1, b2) from `blend`, or a plain noise k (no BNoise: b1 = b2 = 1)."""
        alphas = np.asarray(alphas)
        eps_b = np.asarray([(e, 1.0, 1.0) if np.ndim(e) == 0 else e for e in np.asarray(eps_b, dtype=object)], float)
        self.mix_rows += len(alphas)
        self.mix_batches.append(len(alphas))
        if len(eps_b) == 1:
            eps_b = np.repeat(eps_b, len(alphas), axis=0)
        assert len(eps_b) == len(alphas)
        s = np.array([self.target(a, b1, b2, int(k)) for a, (k, b1, b2) in zip(alphas, eps_b)])
        strong = 1 - self.weak
        d = np.tile(s[:, None] / 4, (1, 2))
        n = d.copy()
        d[:, strong] += self.e_d if self.e_d > 0 else 0.0
        d[:, self.weak] += -self.e_d if self.e_d < 0 else 0.0
        n[:, strong] += self.e_n if self.e_n > 0 else 0.0
        n[:, self.weak] += -self.e_n if self.e_n < 0 else 0.0
        c = n * 0.30 + 0.15
        sub = score.subscores(d[:, 0], d[:, 1], c[:, 0], c[:, 1])
        payload = [dict(k=int(k), alpha=float(a), beta=(float(b1), float(b2))) for a, (k, b1, b2) in zip(alphas, eps_b)]
        return Evaluation.from_subscores(sub, payload)

    def image_model_calls(self, costs=HSPConfig()):
        return self.blend_rows * costs.bnoise_calls + self.mix_rows * costs.mdenoise_calls
