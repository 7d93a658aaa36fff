"""Two CPU directions measured for the decode step (not part of make bench): a compiled step with inductor
freezing (oneDNN-packed linears inside the graph) and int8 with dynamic 8-bit activations (fbgemm)
against weight-only int8. Same-run alternating rounds.

    .venv/bin/python benchmarks/cpu_experiments.py compile | int8 [reduce]
"""
import copy, sys, time, statistics
import torch
import torch.nn.functional as F
from torch import nn
import infergen
from infergen.quant import quantize_int8, compare_quality, quantize_weight
from infergen.models.fast import decode_static

torch.manual_seed(0)
which = sys.argv[1:] or ["compile", "int8"]
REDUCE = "reduce" in which
model, tok = infergen.load_model("smollm2-135m")
model.eval()
ids = tok(["The history of computing is a story of"], return_tensors="pt").input_ids
N = 64


def run(m, n=N):
    with torch.inference_mode():
        return infergen.greedy_search(m, ids, n)


def timed(m):
    t = time.perf_counter(); out = run(m); return time.perf_counter() - t, out


def rounds(models, r=5):
    res = {k: [] for k in models}
    for _ in range(r):
        for k, m in models.items():
            s, _ = timed(m)
            res[k].append(N / s)
    return {k: statistics.median(v) for k, v in res.items()}


if "compile" in which:
    import torch._inductor.config as ic
    ref = run(model)
    variants = {"eager": model}
    t = time.perf_counter()
    with torch.no_grad():
        ic.freezing = True
        ic.cpp_wrapper = "cpp" in which
        fast = infergen.compile_decode(model, compile=False)
        fast.step = torch.compile(lambda *a: decode_static(model, *a), fullgraph=True, dynamic=False)
        out = run(fast)
    print("compile+first run s", time.perf_counter() - t, "identical:", torch.equal(out, ref), flush=True)
    variants["compiled_freezing"] = fast
    print(rounds(variants), flush=True)

if "int8" in which:
    class DynInt8Linear(nn.Module):
        def __init__(self, lin):
            super().__init__()
            q, s = quantize_weight(lin.weight)
            qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros_like(s, dtype=torch.long), 0)
            self.packed_params = torch.ops.quantized.linear_prepack(qw, None if lin.bias is None else lin.bias.float())
            self.out_features = lin.out_features

        def forward(self, x, packed=False):
            shape = x.shape
            y = torch.ops.quantized.linear_dynamic(x.float().reshape(-1, shape[-1]), self.packed_params, REDUCE)
            return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def dyn(m):
        m = copy.deepcopy(m)
        for name, lin in [(n, x) for n, x in m.named_modules() if isinstance(x, nn.Linear)]:
            parent, _, child = name.rpartition(".")
            setattr(m.get_submodule(parent) if parent else m, child, DynInt8Linear(lin))
        return m

    wo = quantize_int8(copy.deepcopy(model))
    dq = dyn(model)
    text = tok("The history of computing is a story of abstraction. Early machines were programmed by rewiring "
               "panels; stored programs made software possible; compilers let people write in languages closer "
               "to mathematics.", return_tensors="pt").input_ids
    for name, m in (("weight-only int8", wo), ("dynamic int8", dq)):
        q = compare_quality(model, m, text)
        print(name, "dlogp", round(q["delta_mean_logprob"], 4), "kl", round(q["kl"], 4), "top1", round(q["top1_agreement"], 3))
        print("  greedy same as f32:", int((run(m) == run(model)).all(0).sum()), "of", ids.shape[1] + N)
    bf = copy.deepcopy(model).to(torch.bfloat16)
    print(rounds({"f32": model, "bf16": bf, "int8_wo": wo, "int8_dyn": dq}), flush=True)
