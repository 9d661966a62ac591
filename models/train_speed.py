"""`bnnflow train MODEL --benchmark-steps N`: Brevitas' forward and the fast engine, side by side.

Both paths train the same model on the same batches in one process; timed blocks alternate
(Brevitas, fast, Brevitas, fast) so a neighbour's load on a shared machine hits both alike.
The statistics phase of the activation scales and the fast engine's compilation are done
before timing, and their seconds are printed apart.
"""

from __future__ import annotations

import time

from bnnflow.cores import usable_cores
from bnnflow.errors import BnnflowError

BLOCKS = 2  # timed blocks per path, interleaved


def benchmark(cfg, steps: int, console) -> dict:
    import torch

    from .data import augment
    from .engine import Engine, bf16_default
    from .train import (EVAL_BATCH, check_config, load_data, make_optimizers, pick_device, prepare_model,
                        to_device_tensors)

    if steps < 2 or steps % BLOCKS:
        raise BnnflowError(f"--benchmark-steps must be an even number of at least 2, got {steps}.")
    if cfg.model is None:
        raise BnnflowError("Name the model to benchmark, e.g. 'bnnflow train resnete --benchmark-steps 40'.")
    if cfg.is_user_model:
        raise BnnflowError("--benchmark-steps compares Brevitas with the fast twin of bnnflow's own models; your "
                           "network trains with Brevitas only, so there is nothing to compare.")
    check_config(cfg)
    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.threads or usable_cores())
    bf16 = bf16_default(device) if cfg.bf16 is None else cfg.bf16
    if cfg.lr is None:
        cfg.lr = 2e-3
    cfg.val_size = 0
    x, y, *_ = to_device_tensors(load_data(cfg), device)
    bs = min(cfg.batch_size, len(x))
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch():
        idx = torch.randint(0, len(x), (bs,), generator=gen).to(device)
        return augment(x[idx].float(), gen), y[idx]

    net, logit_scale = prepare_model(cfg, device)
    opts = make_optimizers(cfg, net, logit_scale, device)
    slow = Engine(net, logit_scale, opts, device, "brevitas")
    quick = Engine(net, logit_scale, opts, device, "fast", bf16=bf16, compile=cfg.compile)
    net.train()
    t0, stat_steps = time.time(), 0
    while not quick.uses_twin():  # Brevitas collects the activation statistics first
        slow.step(*batch())
        stat_steps += 1
    stats_s = time.time() - t0
    t0 = time.time()
    for _ in range(2):  # compile and warm up (first two steps)
        quick.step(*batch())
    warm_s = time.time() - t0
    slow.step(*batch())

    timing = {"brevitas": 0.0, "fast": 0.0}
    per_block = steps // BLOCKS
    for _ in range(BLOCKS):
        for name, eng in (("brevitas", slow), ("fast", quick)):
            batches = [batch() for _ in range(per_block)]
            t0 = time.time()
            for xb, yb in batches:
                eng.step(xb, yb)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timing[name] += time.time() - t0
    ips = {k: steps * bs / v for k, v in timing.items()}
    evaluation = None
    if quick.compile:
        evaluation = evaluation_speed(quick, x[:_whole_batches(min(len(x), steps * bs), EVAL_BATCH)])
    precise = bn_speed(quick, x[:_whole_batches(min(len(x), steps * bs), bs)], bs, cfg.seed) if quick.compile \
        else None
    ratio = ips["fast"] / ips["brevitas"]
    label = f"fast ({'bf16, ' if quick.bf16 else 'fp32, '}{'compiled, ' if quick.compile else ''}channels_last twin)"
    console.print(f"{cfg.model}/{cfg.variant}, batch {bs}, {torch.get_num_threads()} threads on {device}, "
                  f"{steps} timed steps per path in {BLOCKS} interleaved blocks")
    console.print(f"  brevitas (Brevitas forward, fp32, eager): {ips['brevitas']:8.1f} images/s")
    console.print(f"  {label}: {ips['fast']:8.1f} images/s")
    console.print(f"  speed-up: [bold]{ratio:.2f}x[/]   (not timed: {stat_steps} Brevitas statistics steps "
                  f"{stats_s:.0f} s, fast engine compile + warm-up {warm_s:.0f} s)")
    if evaluation is None:
        console.print("  evaluation: not compared (--no-compile: it runs the eager fp32 twin)")
    else:
        e = evaluation["images_per_s"]
        console.print(f"  evaluation (fp32, {evaluation['images']} images per path): eager twin {e['eager']:.1f}, "
                      f"compiled twin {e['compiled']:.1f} images/s, [bold]{evaluation['ratio']:.2f}x[/], "
                      f"same logits: {'yes' if evaluation['identical'] else 'NO (runs evaluate eagerly)'}   "
                      f"(not timed: compile + check {evaluation['compile_s']:.0f} s)")
    if precise is not None:
        e = precise["images_per_s"]
        console.print(f"  batch-norm re-estimate (--bn-images, {precise['images']} images per path): update_bn on the "
                      f"eager twin {e['eager']:.1f}, compiled twin {e['compiled']:.1f} images/s, "
                      f"[bold]{precise['ratio']:.2f}x[/], means apart by up to {precise['apart']:.1e} of a standard "
                      f"deviation   (not timed: compile {precise['compile_s']:.0f} s)")
    return {"images_per_s": ips, "ratio": ratio, "stat_steps": stat_steps, "warmup_s": warm_s,
            "evaluation": evaluation, "precise_bn": precise}


def _whole_batches(n: int, batch: int) -> int:
    """n images in whole evaluation batches (a partial one would recompile), or all of them under one batch."""
    return n - n % batch if n >= batch else n


def evaluation_speed(engine, x_uint8) -> dict:
    """fp32 evaluation through the eager and the compiled twin on the same images, interleaved blocks;
    the compiled graph is built and checked against the eager one (Engine.eval_forward) before timing."""
    import torch

    from .train import EVAL_BATCH, eval_logits

    def logits_of(x):
        return torch.cat([logits for _, logits in eval_logits(engine, x)])

    t0 = time.time()
    engine.compile_eval = True
    logits_of(x_uint8[:EVAL_BATCH])
    compile_s = time.time() - t0
    timing, logits = {"eager": 0.0, "compiled": 0.0}, {}
    for _ in range(BLOCKS):
        for name in timing:
            engine.compile_eval = name == "compiled"
            t0 = time.time()
            logits[name] = logits_of(x_uint8)
            if x_uint8.device.type == "cuda":
                torch.cuda.synchronize()
            timing[name] += time.time() - t0
    ips = {k: BLOCKS * len(x_uint8) / v for k, v in timing.items()}
    return {"images": len(x_uint8), "images_per_s": ips, "ratio": ips["compiled"] / ips["eager"],
            "identical": bool(engine._eval_compiled_exact) and torch.equal(logits["eager"], logits["compiled"]),
            "compile_s": compile_s}



def bn_speed(engine, x_uint8, batch: int, seed: int) -> dict:
    """Precise batch norm's re-estimate (Engine.reestimate_bn) through update_bn on the eager twin and through
    the compiled twin, on the same augmented images in interleaved blocks, and how far apart the two
    estimates of each batch norm's means are, in standard deviations (float32 rounding, different orders)."""
    from .precise_bn import training_batches

    def estimate(compiled: bool) -> dict:
        engine.compile_eval = compiled
        engine.reestimate_bn(training_batches(x_uint8, len(x_uint8), batch, seed))
        return {k: v.clone() for k, v in engine.twin().state_dict().items()
                if k.endswith(("running_mean", "running_var"))}

    t0 = time.time()
    estimate(True)
    compile_s = time.time() - t0
    timing, stats = {"eager": 0.0, "compiled": 0.0}, {}
    for _ in range(BLOCKS):
        for name in timing:
            t0 = time.time()
            stats[name] = estimate(name == "compiled")
            timing[name] += time.time() - t0
    eager, compiled = stats["eager"], stats["compiled"]
    apart = max(float(((compiled[k] - eager[k]).abs() / eager[k.replace("running_mean", "running_var")].sqrt()).max())
                for k in eager if k.endswith("running_mean"))
    ips = {k: BLOCKS * len(x_uint8) / v for k, v in timing.items()}
    return {"images": len(x_uint8), "images_per_s": ips, "ratio": ips["compiled"] / ips["eager"], "apart": apart,
            "compile_s": compile_s}
